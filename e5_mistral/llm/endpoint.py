"""The endpoint of a run: its client and backend, and the structured-output shape it enforces.

The shape (and the token cap's parameter) is asked once per output folder and recorded in ``run_config.json``;
a rerun with the same endpoint, model and backend reuses it without asking again.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

from ..errors import E5MistralError
from .cost import Budget
from .formats import SCHEMA_FORMATS, detect
from .journal import STATUS_FAILED, STATUS_OK, Journal, Request, make_record, request_id
from .settings import EndpointArguments


logger = logging.getLogger(__name__)

# An endpoint that takes no connection fails the run this fast; --timeout bounds each answer, which may be slow.
CONNECT_TIMEOUT_S = 10.0
RUN_SETTINGS_FILE = "run_config.json"  # an output folder's settings and the format its endpoint settled on


def save_settings(args: EndpointArguments, output: Path, detection: dict) -> None:
    """Write the run's public settings and its resolved format, which ``stored_detection`` reads back on resume."""
    settings = {**args.public_dict(), "response_format_resolved": detection}
    (output / RUN_SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def stored_detection(args: EndpointArguments, output: Path) -> dict | None:
    """The format to send without asking: ``none`` when asked for, else what an earlier run of the same
    endpoint and model settled on (so a resumed run keeps its ids and needs no probe)."""
    if args.response_format == "none":
        return {"chosen": "none", "refused": {}}
    previous = output / RUN_SETTINGS_FILE
    if not previous.is_file():
        return None
    try:
        old = json.loads(previous.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    if "response_format" not in old and all(old.get(k) == getattr(args, k) for k in ("model", "base_url")):
        return {"chosen": "none", "refused": {}}  # a run from before structured outputs: keep its request ids
    same = all(old.get(k) == getattr(args, k) for k in ("response_format", "model", "base_url", "backend"))
    resolved = old.get("response_format_resolved") or {}
    return resolved if same and resolved.get("chosen") in ("none",) + SCHEMA_FORMATS else None


async def detect_response_format(args: EndpointArguments, backend, journal: Journal, sampling: dict) -> dict:
    """``{"chosen", "refused", "max_tokens_param"[, "default_sampling"]}``: ask the endpoint once which schema
    shape it enforces (``auto``), or check the one asked for, through ``backend`` (its client is the caller's to
    close), with the stage's ``sampling``. Every probe attempt is journaled like any request, so the report counts
    its requests and tokens."""
    import openai

    from .online import FATAL_STATUS, EndpointError

    requested = args.response_format
    if args.backend != "online":  # no endpoint to ask: the Batch API's and vLLM's chat routes take json_schema
        return {
            "chosen": "json_schema" if requested == "auto" else requested,
            "refused": {},
            "max_tokens_param": args.default_max_tokens_param(),
        }
    await backend.check_endpoint()
    formats = SCHEMA_FORMATS if requested == "auto" else (requested,)
    try:
        found, cap, default_sampling = await _detect_adapting(args, backend, journal, sampling, formats)
    except openai.APIStatusError as err:
        reason = FATAL_STATUS.get(
            err.status_code, "the endpoint failed while asked which JSON schema shape it enforces"
        )
        raise EndpointError(f"{reason} (HTTP {err.status_code} from {backend.endpoint}): {err.message}") from None
    except openai.APIConnectionError as err:
        raise EndpointError(f"cannot reach the endpoint {backend.endpoint} ({type(err).__name__})") from None
    if requested != "auto" and found.chosen != requested:
        raise E5MistralError(
            f"the endpoint does not enforce --response-format {requested} "
            f"({found.refused[requested]}); use --response-format auto or none"
        )
    if found.chosen == "none":
        logger.warning(
            "the endpoint enforces no JSON schema (%s); sending requests without response_format",
            "; ".join(f"{mode}: {why}" for mode, why in found.refused.items()),
        )
    return {**found.to_dict(), "max_tokens_param": cap, **({"default_sampling": True} if default_sampling else {})}


async def _detect_adapting(args: EndpointArguments, backend, journal: Journal, sampling: dict, formats) -> tuple:
    """``detect`` over ``formats``, again with max_completion_tokens or the model's default sampling when the
    endpoint refuses max_tokens or temperature (OpenAI's reasoning models); (found, cap parameter, default sampling)."""
    import openai

    cap, default_sampling = args.default_max_tokens_param(), False
    send = functools.partial(_send_probe, backend, journal)
    while True:
        params = args.request_params(sampling, max_tokens_param=cap, default_sampling=default_sampling)
        try:
            found = await detect(lambda body: backend.retry_rate_limits(send, body), params, formats)
            return found, cap, default_sampling
        except openai.BadRequestError as err:
            if (
                args.max_tokens_param == "auto"
                and cap == "max_tokens"
                and _names(err, "max_tokens", "max_completion_tokens")
            ):
                logger.warning("the endpoint refuses max_tokens (%s); sending max_completion_tokens", err.message)
                cap = "max_completion_tokens"
            elif not default_sampling and _names(err, "temperature"):
                logger.warning("the model takes only its default temperature (%s); sending none", err.message)
                default_sampling = True
            else:
                raise


async def _send_probe(backend, journal: Journal, body: dict):
    """One probe request, journaled as ok (with its usage) or failed."""
    import openai

    probe = Request(
        request_id({"kind": "probe", "body": body}),
        "probe",
        "",
        tuple(body["messages"]),
        {k: v for k, v in body.items() if k != "messages"},
    )
    try:
        answer = await backend.post(body)
    except (openai.APIStatusError, openai.APIConnectionError) as err:
        journal.append(make_record(probe, STATUS_FAILED, error=f"{type(err).__name__}: {err}"[:500]))
        raise
    usage = answer.get("usage") if isinstance(answer, dict) and isinstance(answer.get("usage"), dict) else {}
    tokens = {key: usage.get(key) or 0 for key in ("prompt_tokens", "completion_tokens")}
    journal.append(make_record(probe, STATUS_OK, usage=tokens))
    return answer


def make_backend(args: EndpointArguments, output: Path, budget: Budget):
    """The client (AsyncOpenAI or AsyncAzureOpenAI, retries off: the backend retries; None for vllm-batch) and the
    backend."""
    import openai

    if args.backend == "vllm-batch":
        from .vllm_batch import VllmBatchBackend

        return None, VllmBatchBackend(output, budget)

    from .online import make_http_client

    api_key = args.api_key()
    # aiohttp only where CPU per request matters; the batch backend uploads files through httpx
    common = dict(
        api_key=api_key,
        max_retries=0,
        timeout=openai.Timeout(args.timeout, connect=min(CONNECT_TIMEOUT_S, args.timeout)),
        http_client=make_http_client(args.http_client) if args.backend == "online" else None,
    )
    if args.azure_api_version:
        client = openai.AsyncAzureOpenAI(azure_endpoint=args.base_url, api_version=args.azure_api_version, **common)
    else:
        client = openai.AsyncOpenAI(base_url=args.base_url, **common)
    if args.backend == "batch":
        from .batch import BatchBackend

        return client, BatchBackend(
            client, output, poll_interval=args.batch_poll_interval, wait=not args.batch_no_wait, budget=budget
        )
    from .online import OnlineBackend

    return client, OnlineBackend(
        client,
        concurrency=args.concurrency,
        rpm=args.rpm,
        tpm=args.tpm,
        max_attempts=args.max_attempts,
        initial_wait=args.retry_initial_wait,
        max_wait=args.retry_max_wait,
        budget=budget,
        endpoint=args.base_url or "the OpenAI API",
    )


def _names(err, *words: str) -> bool:
    """Whether a 400's message names every one of ``words`` (e.g. "temperature": the parameter it refuses)."""
    message = str(getattr(err, "message", err))
    return all(word in message for word in words)
