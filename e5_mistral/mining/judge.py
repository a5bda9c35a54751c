"""The LLM as judge of mined negatives: a mined candidate that the judge finds relevant to its query is a false
negative, and is dropped.

Each (instruction, query, mined negative) is one chat request through the LLM layer (:mod:`e5_mistral.llm`), as
generation's: the same back ends (retries, rate limits, the server's signals), the same budget
(``--judge-max-cost`` binds), the same structured-output detection (the answer is ``{"relevant": "yes" | "no"}``),
and an answer journaled once is never paid for again, whatever kills the run. A row's own negative (the
LLM-written one of a synthesis row) is not judged. An answer that cannot be read, or a request that failed, keeps
its negative and is counted as ``unjudged``.

The judge's options are the endpoint options of ``e5-mistral generate``, each with a ``judge_`` prefix (so they
never clash with the teacher's): ``--judge-model``, ``--judge-base-url``, ``--judge-api-key-env``,
``--judge-concurrency``, ``--judge-max-cost``...
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from ..errors import E5MistralError
from ..llm.answers import Rejected, extract_json
from ..llm.cost import usage_totals
from ..llm.formats import REASONING_ROOM, wrap_schema
from ..llm.journal import STATUS_OK, Request, chat_request, needs_sending, request_id
from ..llm.session import EndpointSession
from ..llm.settings import EndpointArguments, prefixed


PROMPT = (Path(__file__).parent / "judge_prompt.txt").read_text(encoding="utf-8")
VERDICT_KEY = "relevant"
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {VERDICT_KEY: {"type": "string", "enum": ["yes", "no"]}},
    "required": [VERDICT_KEY],
    "additionalProperties": False,
}
# A verdict, not a creation: greedy (a model that takes only its default sampling is sent none).
SAMPLING = {"temperature": 0.0, "top_p": 1.0}

JudgeArguments = prefixed(
    "judge",
    group="LLM judge",
    defaults={"max_tokens": 64},  # a verdict is a few tokens; room for a model that adds a sentence
    helps={
        "model": "judge each mined negative with this model (OpenAI-compatible endpoint, the same options as "
        "generate's with a judge- prefix) and drop those it finds relevant to their query"
    },
    exclude=("backend", "batch_no_wait", "batch_poll_interval"),  # the judge runs online
    doc="The LLM judge of `e5-mistral mine`.",
)
JudgeArguments.__module__ = __name__


def judge_request(row: dict, document: str, params: dict) -> Request:
    prompt = PROMPT.format(task=row["instruction"] or "(none)", query=row["query"], document=document)
    rid = request_id({"kind": "judge", "prompt": prompt, "params": dict(params)})
    schema = (
        wrap_schema(params["response_format"], "judgement", VERDICT_SCHEMA) if "response_format" in params else None
    )
    return chat_request(rid, "judge", "judge", prompt, params, schema)


def verdict(record: dict | None) -> bool | None:
    """True: relevant (a false negative); False: a true negative; None: no usable answer."""
    if record is None or record["status"] != STATUS_OK:
        return None
    try:
        answer = extract_json(record.get("content") or "")
    except Rejected:
        return None
    value = str(answer.get(VERDICT_KEY, "")).strip().lower() if isinstance(answer, dict) else ""
    return {"yes": True, "true": True, "no": False, "false": False}.get(value)


def judge_negatives(rows: list[dict], args, folder: Path, hide_progress: bool = True) -> tuple[list[dict], dict]:
    """``rows`` without the mined negatives the judge finds relevant, and the counts (with tokens and cost)."""
    return asyncio.run(_judge(rows, args.endpoint(), folder, hide_progress))


def _candidates(rows: list[dict], params: dict) -> tuple[dict[str, Request], list[tuple[int, int, str]]]:
    """The judge's requests (by id) and (row, negative index, request id) of every mined negative."""
    requests: dict[str, Request] = {}
    candidates = []
    for i, row in enumerate(rows):
        for k, (negative, score) in enumerate(zip(row["negative"], row["negative_scores"])):
            if score is not None:  # mined (a row's own negative has no teacher score)
                request = judge_request(row, negative, params)
                requests.setdefault(request.request_id, request)
                candidates.append((i, k, request.request_id))
    return requests, candidates


async def _judge(rows: list[dict], settings: EndpointArguments, folder: Path, hide_progress: bool):
    from tqdm.auto import tqdm

    async with EndpointSession(settings, folder, SAMPLING, command="e5-mistral mine (judge)") as session:
        detection = await session.resolve_format()
        # a verdict is a few tokens, but a reasoning model (max_completion_tokens, or only its default sampling)
        # spends its hidden reasoning out of the same cap first
        if detection.get("default_sampling") or detection.get("max_tokens_param") == "max_completion_tokens":
            settings = dataclasses.replace(settings, max_tokens=max(settings.max_tokens, REASONING_ROOM))
        params = settings.request_params(
            SAMPLING, detection["chosen"], detection.get("max_tokens_param"), detection.get("default_sampling", False)
        )
        requests, candidates = _candidates(rows, params)
        latest = session.journal.latest()
        pending = [r for rid, r in requests.items() if needs_sending(latest.get(rid), settings.retry_refused)]
        if pending:
            bar = tqdm(total=len(pending), desc="judging", unit="pair", disable=hide_progress)
            session.journal.listeners.append(lambda record: bar.update(1))
            try:
                await session.send(pending)
            finally:
                bar.close()
        stopped = session.stopped_by_budget
    latest = session.journal.latest()
    verdicts = {rid: verdict(latest.get(rid)) for rid in requests}
    dropped = {(i, k) for i, k, rid in candidates if verdicts[rid] is True}
    paid = [r for r in session.journal.records() if r["request_id"] in requests]
    counts = {
        "candidates": len(candidates),
        "judged": sum(1 for *_, rid in candidates if verdicts[rid] is not None),
        "dropped": len(dropped),
        "unjudged": sum(1 for *_, rid in candidates if verdicts[rid] is None),
        "requests_sent": sum(int(r.get("attempts") or 0) for r in paid),
        **usage_totals(paid, session.prices),
        "budget_stopped": stopped,
        "response_format": detection["chosen"],
        "model": settings.model,
    }
    if counts["unjudged"] and not stopped:
        failed = sum(1 for rid in requests if latest.get(rid) is None or latest[rid]["status"] != STATUS_OK)
        if failed:
            counts["failed_requests"] = failed
    return _without(rows, dropped), counts


def _without(rows: list[dict], dropped: set[tuple[int, int]]) -> list[dict]:
    """``rows`` less the (row, negative index) pairs in ``dropped``."""
    kept_rows = []
    for i, row in enumerate(rows):
        keep = [k for k in range(len(row["negative"])) if (i, k) not in dropped]
        kept_rows.append(
            {
                **row,
                "negative": [row["negative"][k] for k in keep],
                "negative_scores": [row["negative_scores"][k] for k in keep],
            }
        )
    return kept_rows


def check_judge(args) -> None:
    """Fail before any mining when the judge is set up wrongly (a bad flag, no key, --max-cost without a price);
    the errors name the judge's own flags."""
    if args.judge_model is None:
        for name in ("judge_base_url", "judge_max_cost", "judge_price_table"):
            if getattr(args, name) is not None:
                raise E5MistralError(f"--{name.replace('_', '-')} needs --judge-model")
        return
    try:
        settings = args.endpoint()
        settings.check_endpoint()
        settings.api_key()
    except E5MistralError as err:
        raise E5MistralError(f"judge: {err}") from None
