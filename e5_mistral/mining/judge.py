"""The LLM as judge of training pairs: of mined negatives (``e5-mistral mine``: one the judge finds relevant to
its query is a false negative, and is dropped) and of generated positives (``e5-mistral filter``: a row whose
positive the judge finds not to satisfy its query is dropped).

Each (task, query, document) is one chat request through the LLM layer (:mod:`e5_mistral.llm`), as generation's:
the same back ends (retries, rate limits, the server's signals), the same budget (``--judge-max-cost`` binds), the
same structured-output detection (the answer is ``{"relevant": "yes" | "no"}``), and an answer journaled once is
never paid for again, whatever kills the run. A row's own negative (the LLM-written one of a synthesis row) is not
judged. An answer that cannot be read, or a request that failed, keeps its pair and is counted as ``unjudged``.

The judge's options are the endpoint options of ``e5-mistral generate``, each with a ``judge_`` prefix (so they
never clash with the teacher's): ``--judge-model``, ``--judge-base-url``, ``--judge-api-key-env``,
``--judge-concurrency``, ``--judge-max-cost``...
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import E5MistralError
from ..llm.answers import Rejected, extract_json
from ..llm.ask import ask
from ..llm.formats import wrap_schema
from ..llm.journal import STATUS_OK, Request, chat_request, request_id
from ..llm.settings import prefixed


NEGATIVE_PROMPT = (Path(__file__).parent / "judge_negative_prompt.txt").read_text(encoding="utf-8")
POSITIVE_PROMPT = (Path(__file__).parent / "judge_positive_prompt.txt").read_text(encoding="utf-8")
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
        "model": "judge each pair with this model (OpenAI-compatible endpoint, the same options as generate's "
        "with a judge- prefix): mine drops mined negatives it finds relevant, filter drops rows whose positive it "
        "finds off the query"
    },
    exclude=("backend", "batch_no_wait", "batch_poll_interval"),  # the judge runs online
    doc="The LLM judge of `e5-mistral mine` and `e5-mistral filter`.",
)
JudgeArguments.__module__ = __name__


def judge_request(prompt: str, pair: tuple[str, str, str], params: dict) -> Request:
    """The chat request asking ``prompt`` of one (task, query, document)."""
    task, query, document = pair
    text = prompt.format(task=task or "(none)", query=query, document=document)
    rid = request_id({"kind": "judge", "prompt": text, "params": dict(params)})
    schema = (
        wrap_schema(params["response_format"], "judgement", VERDICT_SCHEMA) if "response_format" in params else None
    )
    return chat_request(rid, "judge", "judge", text, params, schema)


def verdict(record: dict | None) -> bool | None:
    """True: relevant; False: not relevant; None: no usable answer."""
    if record is None or record["status"] != STATUS_OK:
        return None
    try:
        answer = extract_json(record.get("content") or "")
    except Rejected:
        return None
    value = str(answer.get(VERDICT_KEY, "")).strip().lower() if isinstance(answer, dict) else ""
    return {"yes": True, "true": True, "no": False, "false": False}.get(value)


def judge_pairs(
    prompt: str, pairs: list[tuple[str, str, str]], args, folder: Path, command: str, hide_progress: bool = True
) -> tuple[list[bool | None], dict]:
    """The judge's verdict on each (task, query, document), and the counts (with tokens and cost)."""
    _, records, counts = ask(
        args.endpoint(),
        folder,
        SAMPLING,
        lambda params: [judge_request(prompt, pair, params) for pair in pairs],
        command,
        desc="judging",
        hide_progress=hide_progress,
    )
    verdicts = [verdict(record) for record in records]
    counts = {
        "judged": sum(v is not None for v in verdicts),
        "unjudged": sum(v is None for v in verdicts),
        **{k: v for k, v in counts.items() if k != "requests"},
    }
    if not counts["unjudged"]:
        counts.pop("failed_requests", None)
    return verdicts, counts


def judge_negatives(rows: list[dict], args, folder: Path, hide_progress: bool = True) -> tuple[list[dict], dict]:
    """``rows`` without the mined negatives the judge finds relevant, and the counts (with tokens and cost)."""
    where, pairs = [], []
    for i, row in enumerate(rows):
        for k, (negative, score) in enumerate(zip(row["negative"], row["negative_scores"])):
            if score is not None:  # mined (a row's own negative has no teacher score)
                where.append((i, k))
                pairs.append((row["instruction"], row["query"], negative))
    verdicts, counts = judge_pairs(NEGATIVE_PROMPT, pairs, args, folder, "e5-mistral mine (judge)", hide_progress)
    dropped = {pair for pair, relevant in zip(where, verdicts) if relevant is True}
    return _without(rows, dropped), {"candidates": len(pairs), "dropped": len(dropped), **counts}


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


def judge_settings(judge) -> dict:
    """The judge's settings for a report and card: never its key, only the variable's name."""
    return {f.name: getattr(judge, f.name) for f in dataclasses.fields(judge)}


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
