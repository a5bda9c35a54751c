"""The LLM as judge of mined negatives: a mined candidate that the judge finds relevant to its query is a false
negative, and is dropped.

Each (instruction, query, mined negative) is one chat request through the synthesis stage's client and journal:
the same online backend (retries, rate limits, the server's signals), the same budget (``--judge-max-cost``
binds), the same structured-output detection (the answer is ``{"relevant": "yes" | "no"}``), and an answer
journaled once is never paid for again, whatever kills the run. A row's own negative (the LLM-written one of a
synthesis row) is not judged. An answer that cannot be read, or a request that failed, keeps its negative and is
counted as ``unjudged``.

The judge's options are those of ``e5-mistral generate``'s endpoint, each with a ``judge_`` prefix (so they
never clash with the teacher's): ``--judge-model``, ``--judge-base-url``, ``--judge-api-key-env``,
``--judge-concurrency``, ``--judge-max-cost``...
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import typing
from pathlib import Path
from typing import Optional

from ..errors import E5MistralError
from ..synthesis.config import SynthesisArguments
from ..synthesis.journal import STATUS_OK, Request, needs_sending


PROMPT = (Path(__file__).parent / "judge_prompt.txt").read_text(encoding="utf-8")
# generate's endpoint settings that the judge takes too, as --judge-<name>
ENDPOINT_FIELDS = (
    "base_url",
    "api_key_env",
    "azure_api_version",
    "extra_body",
    "response_format",
    "max_tokens",
    "max_tokens_param",
    "concurrency",
    "rpm",
    "tpm",
    "max_attempts",
    "retry_refused",
    "timeout",
    "retry_initial_wait",
    "retry_max_wait",
    "http_client",
    "price_table",
    "max_cost",
    "max_total_tokens",
)
# A verdict is a few tokens, but a reasoning model spends its hidden reasoning out of the same cap (billed as used).
JUDGE_DEFAULTS = {"max_tokens": 1024}


def _fields() -> list[tuple]:
    hints = typing.get_type_hints(SynthesisArguments)
    fields = [
        (
            "judge_model",
            Optional[str],
            dataclasses.field(
                default=None,
                metadata={
                    "help": "judge each mined negative with this model (OpenAI-compatible endpoint, the same options "
                    "as generate's with a judge- prefix) and drop those it finds relevant to their query"
                },
            ),
        )
    ]
    for spec in dataclasses.fields(SynthesisArguments):
        if spec.name in ENDPOINT_FIELDS:
            default = JUDGE_DEFAULTS.get(spec.name, spec.default)
            fields.append(
                (f"judge_{spec.name}", hints[spec.name], dataclasses.field(default=default, metadata=spec.metadata))
            )
    return fields


def _endpoint(self, folder: Path) -> SynthesisArguments:
    """The judge's endpoint settings as the synthesis client takes them (greedy decoding)."""
    settings = SynthesisArguments(
        model=self.judge_model,
        output=str(folder),
        temperature=0.0,
        no_progress=True,
        **{name: getattr(self, f"judge_{name}") for name in ENDPOINT_FIELDS},
    )
    settings.check_runnable()
    return settings


JudgeArguments = dataclasses.make_dataclass(
    "JudgeArguments",
    _fields(),
    namespace={
        "endpoint": _endpoint,
        "__doc__": "The LLM judge of `e5-mistral mine`.",
        "HELP_GROUPS": {"LLM judge": ("judge_model", *(f"judge_{name}" for name in ENDPOINT_FIELDS))},
    },
)
JudgeArguments.__module__ = __name__


def judge_request(row: dict, document: str, params: dict) -> Request:
    from ..synthesis.plan import body_params, chat_messages, request_id

    prompt = PROMPT.format(task=row["instruction"] or "(none)", query=row["query"], document=document)
    rid = request_id({"kind": "judge", "prompt": prompt, "params": dict(params)})
    return Request(rid, "judge", "judge", chat_messages(prompt, params), body_params(params, "judge", "judge", rid))


def verdict(record: dict | None) -> bool | None:
    """True: relevant (a false negative); False: a true negative; None: no usable answer."""
    from ..synthesis.parsing import Rejected, extract_json
    from ..synthesis.structured import JUDGE_KEY

    if record is None or record["status"] != STATUS_OK:
        return None
    try:
        answer = extract_json(record.get("content") or "")
    except Rejected:
        return None
    value = str(answer.get(JUDGE_KEY, "")).strip().lower() if isinstance(answer, dict) else ""
    return {"yes": True, "true": True, "no": False, "false": False}.get(value)


def judge_negatives(rows: list[dict], args, folder: Path, hide_progress: bool = True) -> tuple[list[dict], dict]:
    """``rows`` without the mined negatives the judge finds relevant, and the counts (with tokens and cost)."""
    settings = args.endpoint(folder)
    return asyncio.run(_judge(rows, settings, folder, hide_progress))


async def _judge(rows: list[dict], settings: SynthesisArguments, folder: Path, hide_progress: bool):
    from tqdm.auto import tqdm

    from ..synthesis.cost import Budget, load_price_table, usage_totals
    from ..synthesis.endpoint import detect_response_format, make_backend, save_settings, stored_detection
    from ..synthesis.runner import ObservedJournal

    folder.mkdir(parents=True, exist_ok=True)
    prices = load_price_table(settings.price_table)
    journal = ObservedJournal(folder / "journal")
    budget = Budget(settings.max_cost, settings.max_total_tokens, prices).track(journal)
    client, backend = make_backend(settings, folder, budget)
    try:
        detection = stored_detection(settings, folder)
        if detection is None:
            detection = await detect_response_format(settings, backend, journal)
            save_settings(settings, folder, detection)
        params = settings.generation_params(
            detection["chosen"], detection.get("max_tokens_param"), detection.get("default_sampling", False)
        )
        requests: dict[str, Request] = {}
        candidates = []  # (row, negative index, request id) of every mined negative
        for i, row in enumerate(rows):
            for k, (negative, score) in enumerate(zip(row["negative"], row["negative_scores"])):
                if score is not None:  # mined (a row's own negative has no teacher score)
                    request = judge_request(row, negative, params)
                    requests.setdefault(request.request_id, request)
                    candidates.append((i, k, request.request_id))
        latest = journal.latest()
        pending = [r for rid, r in requests.items() if needs_sending(latest.get(rid), settings.retry_refused)]
        if pending:
            bar = tqdm(total=len(pending), desc="judging", unit="pair", disable=hide_progress)
            journal.listeners.append(lambda record: bar.update(1))
            try:
                await backend.check_endpoint()
                await backend.run(pending, journal)
            finally:
                bar.close()
    finally:
        await client.close()
        journal.close()
    latest = journal.latest()
    verdicts = {rid: verdict(latest.get(rid)) for rid in requests}
    dropped = {(i, k) for i, k, rid in candidates if verdicts[rid] is True}
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
    paid = [r for r in journal.records() if r["request_id"] in requests]
    counts = {
        "candidates": len(candidates),
        "judged": sum(1 for *_, rid in candidates if verdicts[rid] is not None),
        "dropped": len(dropped),
        "unjudged": sum(1 for *_, rid in candidates if verdicts[rid] is None),
        "requests_sent": sum(int(r.get("attempts") or 0) for r in paid),
        **usage_totals(paid, prices),
        "budget_stopped": bool(backend.stopped_by_budget),
        "response_format": detection["chosen"],
        "model": settings.model,
    }
    if counts["unjudged"] and not counts["budget_stopped"]:
        failed = sum(1 for rid in requests if latest.get(rid) is None or latest[rid]["status"] != STATUS_OK)
        if failed:
            counts["failed_requests"] = failed
    return kept_rows, counts


def check_judge(args) -> None:
    """Fail before any mining when the judge is set up wrongly (a bad flag, no key, --max-cost without a price)."""
    if args.judge_model is None:
        for name in ("judge_base_url", "judge_max_cost", "judge_price_table"):
            if getattr(args, name) is not None:
                raise E5MistralError(f"--{name.replace('_', '-')} needs --judge-model")
        return
    try:
        args.endpoint(Path(".")).api_key()
    except E5MistralError as err:  # said in the judge's own flags
        raise E5MistralError("judge: " + re.sub(r"--(?!judge-)([a-z][a-z-]*)", r"--judge-\1", str(err))) from None
