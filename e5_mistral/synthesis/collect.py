"""Collect: turn the journal's answers for a plan into rows, rejects and the run's report.

Everything downstream of the journal is recomputed from it on every run, so a resumed run ends exactly where an
uninterrupted one would: ``report.json`` is cumulative and its invariant holds by construction (every planned
example is accepted, rejected, a duplicate or failed).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Mapping, TextIO, TypedDict

from ..hub.schema import ALL_CONFIG
from ..hub.writer import DATA_FILE, HubFolderWriter, run_settings, write_json
from ..llm.cost import price_for, usage_totals
from ..llm.journal import STATUS_OK, STATUS_REFUSED
from ..text import match_key
from .config import SynthesisArguments
from .parsing import Rejected, parse_example
from .planner import Planner
from .templates import DEDUP_KEY


class SynthesisReport(TypedDict):
    """``report.json``: cumulative over every run on the output folder."""

    planned: int
    requests_sent: int  # every attempt, retries and the format probe included
    responses_ok: int
    accepted: int
    rejected: dict[str, int]  # reason -> examples
    duplicates_removed: int
    failed: int
    failed_reasons: dict[str, int]  # refused, brainstorm_incomplete, budget, the exception class, ...
    orphaned: dict[str, Any]  # paid answers the current plan no longer uses (another sizing or dedup option)
    prompt_tokens: int
    completion_tokens: int
    estimated_cost_usd: float
    cost_priced: bool
    brainstorm: dict[str, int]
    per_family: dict[str, dict[str, int]]
    per_language: dict[str, int]  # accepted rows
    acceptance: dict[str, Any]  # accepted share of the answered examples, per family, language, model and reason
    per_model: dict[str, dict[str, Any]]  # generator -> answered, accepted, rate, tokens and cost (every attempt)
    response_format: dict[str, Any]  # what `auto` chose and why the other shapes were not taken
    generator_models: list[str]
    budget_stopped: bool
    batches_running: int
    seed: int
    complete: bool


@dataclass
class RunResult:
    report: SynthesisReport
    output: Path

    @property
    def rows(self) -> list[dict]:
        """The accepted rows, read back from the dataset's ``all`` config (columns of every family)."""
        import pyarrow.parquet as pq

        return pq.read_table(self.output / "dataset" / ALL_CONFIG / DATA_FILE).to_pylist()


@dataclass
class Tally:
    """What the journal's answers to a plan came to, family by family (the plan itself is ``FamilyPlan``). Rows go
    to the dataset writer and rejects to ``rejected.jsonl`` as they are found; only counts stay."""

    rows: HubFolderWriter
    rejects: TextIO
    failed_reasons: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)  # reason -> examples
    duplicates: int = 0
    brainstorm: Counter = field(default_factory=Counter)
    answered: Counter = field(default_factory=Counter)  # ("family", "language" or "model", name) -> answered
    accepted: Counter = field(default_factory=Counter)  # ... -> examples accepted
    per_family: dict = field(default_factory=dict)

    def reject(self, record: dict) -> None:
        self.rejects.write(json.dumps(record, ensure_ascii=False) + "\n")


def collect(plans, planner: Planner, journal, args: SynthesisArguments, prices: dict, state: dict) -> RunResult:
    """Parse every answer of the plan, dedup, and write report.json, rejected.jsonl, diversity.json and dataset/,
    streaming rows from the journal to the files. ``journal`` is the run's ``ObservedJournal``; ``state`` holds
    ``detection``, ``budget_stopped`` and ``batches_running``."""
    output = Path(args.output)
    latest = journal.latest()
    failure = partial(_failure_reason, budget_stopped=state["budget_stopped"], running=state["batches_running"])
    writer = HubFolderWriter(output / "dataset")
    try:
        with open(output / "rejected.jsonl.tmp", "w", encoding="utf-8") as rejects:
            tally = Tally(writer, rejects)
            for fp in plans:  # rows in plan order: family, then row index
                _tally_brainstorms(fp, latest, planner, tally)
                _tally_examples(fp, latest, tally, failure)
    except BaseException:
        writer.abort()
        raise
    report = _report(plans, journal, tally, args, prices, state["detection"])
    report.update(budget_stopped=state["budget_stopped"], batches_running=state["batches_running"], seed=args.seed)
    report["complete"] = report["failed"] == 0
    write_json(output / "diversity.json", writer.diversity.report())
    write_json(output / "report.json", report)
    os.replace(output / "rejected.jsonl.tmp", output / "rejected.jsonl")
    writer.close(report, run_settings(args), args.push_to_hub)
    return RunResult(report, output)


def _tally_brainstorms(fp, latest: Mapping[str, dict], planner: Planner, tally: Tally) -> None:
    """A family's brainstorm requests: answered or not, and why an answered task list was unusable."""
    tally.brainstorm["planned"] += len(fp.brainstorms)
    for request in fp.brainstorms:
        rec = latest.get(request.request_id)
        tally.brainstorm["ok" if rec and rec["status"] == STATUS_OK else "failed"] += 1
    for request in fp.brainstorm_history:
        rec = latest.get(request.request_id)
        if rec and rec["status"] == STATUS_OK:
            try:
                planner.tasks_of(rec)
            except Rejected as err:
                tally.reject(_reject(rec, "brainstorm", err.reason, {"family": fp.family}))
    for key, value in fp.task_stats.items():
        tally.brainstorm[key if not key.startswith("rejected:") else "rejected"] += value


def _tally_examples(fp, latest: Mapping[str, dict], tally: Tally, failure_reason) -> None:
    """A family's examples: failed, rejected (with the reason), duplicate, or accepted as a row."""
    stats = Counter(planned=fp.count)
    if fp.tasks is None:  # brainstorm not finished: these examples could not be planned yet
        stats["failed"] += fp.count
        tally.failed_reasons["brainstorm_incomplete"] += fp.count
    elif fp.count and not fp.specs:
        stats["rejected"] += fp.count
        tally.rejected["no_valid_tasks"] += fp.count
    seen = set()
    for spec in fp.specs:
        entry = latest.get(spec.request_id)
        if entry is None or entry["status"] != STATUS_OK:
            stats["failed"] += 1
            tally.failed_reasons[failure_reason(entry)] += 1
            continue
        rec = entry.record()  # the answer, read back from its line
        tally.answered.update((("family", fp.family), ("language", spec.language), ("model", spec.model)))
        try:
            fields = parse_example(fp.family, rec["content"], rec["finish_reason"])
        except Rejected as err:
            stats["rejected"] += 1
            tally.rejected[err.reason] += 1
            tally.reject(_reject(rec, "example", err.reason, {"task": spec.task, "language": spec.language}))
            continue
        key = match_key(fields[DEDUP_KEY[fp.family]])
        if key in seen:
            stats["duplicates_removed"] += 1
            tally.duplicates += 1
            continue
        seen.add(key)
        stats["accepted"] += 1
        tally.accepted.update((("family", fp.family), ("language", spec.language), ("model", spec.model)))
        meta = fp.meta(spec)
        tally.rows.add({**meta, "generator_model": rec.get("model") or meta["generator_model"], **fields})
    keys = ("planned", "accepted", "rejected", "duplicates_removed", "failed")
    tally.per_family[fp.family] = {k: stats[k] for k in keys}


def _report(plans, journal, tally: Tally, args, prices, detection) -> dict:
    """``report.json`` without the run's state (budget stop, running batches, seed, completeness)."""
    latest, brainstorm, written = journal.latest(), tally.brainstorm, tally.rows
    acceptance = _acceptance(tally.answered, tally.accepted, tally.rejected)
    return {
        "planned": sum(fp.count for fp in plans),
        "requests_sent": journal.totals.attempts,
        "responses_ok": sum(1 for r in latest.values() if r["status"] == STATUS_OK and r["kind"] != "probe"),
        "accepted": written.counts[ALL_CONFIG],
        "rejected": dict(sorted(tally.rejected.items())),
        "duplicates_removed": tally.duplicates,
        "failed": sum(tally.failed_reasons.values()),
        "failed_reasons": dict(sorted(tally.failed_reasons.items())),
        "orphaned": _orphaned(plans, journal, prices),
        **usage_totals(journal.totals.as_records(), prices),
        "cost_priced": all(price_for(prices, model) is not None for model in args.generators()),
        "brainstorm": {
            "planned": brainstorm["planned"],
            "ok": brainstorm["ok"],
            "failed": brainstorm["failed"],
            "rejected": brainstorm["rejected"],
            "reasked": brainstorm["reasked"],
            "from_text_lists": brainstorm["from_text_lists"],
            "tasks_generated": brainstorm["generated"],
            "tasks_unique": brainstorm["unique"],
            "tasks_removed_duplicate": brainstorm["removed_duplicate"],
            "tasks_removed_near_duplicate": brainstorm["removed_near_duplicate"],
        },
        "per_family": tally.per_family,
        "per_language": dict(written.languages.most_common()),
        "acceptance": acceptance,
        "per_model": _per_model(journal, acceptance["per_model"], prices),
        "response_format": detection or {"chosen": "none", "refused": {}},
        "generator_models": sorted(written.generators),
    }


def _orphaned(plans, journal, prices: dict) -> dict:
    """Answers in the journal that no request of the current plan stands for: the plan changed since they were paid
    for (``--examples-per-task``, a dedup option, ``--accept-text-task-lists``...). A family whose task list is not
    known yet is left out: its earlier answers may still be placed once its brainstorm finishes."""
    planned, open_families = set(), set()
    for fp in plans:
        planned.update(r.request_id for r in fp.brainstorm_history)
        planned.update(spec.request_id for spec in fp.specs)
        if fp.tasks is None:
            open_families.add(fp.family)
    latest = journal.latest()
    ids = {
        rid
        for rid, rec in latest.items()
        if rec["status"] == STATUS_OK
        and rec["kind"] in ("brainstorm", "example")
        and rid not in planned
        and not (rec["kind"] == "example" and rec["family"] in open_families)
    }
    # their cost: every attempt was paid for (read again only when there are such answers)
    paid = (r for r in journal.records() if r["request_id"] in ids) if ids else ()
    return {
        "answers": len(ids),
        "examples": sum(1 for rid in ids if latest[rid]["kind"] == "example"),
        **usage_totals(paid, prices),
    }


def _per_model(journal, acceptance: dict, prices: dict) -> dict:
    """Per generator: its examples' acceptance, and the tokens and cost of every attempt sent to it."""
    spent: dict[str, list] = {}
    for total in journal.totals.as_records():
        spent.setdefault(total["model"], []).append(total)
    empty = {"answered": 0, "accepted": 0, "rate": None}
    return {str(model): {**acceptance.get(model, empty), **usage_totals(spent[model], prices)} for model in spent}


def _acceptance(answered: Counter, accepted: Counter, rejected: Counter) -> dict:
    """Accepted share of the answered examples (duplicates and rejects count against it), overall, per family and
    per language, and each reject reason's share of the answered examples."""

    def rates(axis: str) -> dict:
        keys = sorted((k for a, k in answered if a == axis), key=lambda k: (-answered[(axis, k)], k))
        return {
            k: {
                "answered": answered[(axis, k)],
                "accepted": accepted[(axis, k)],
                "rate": round(accepted[(axis, k)] / answered[(axis, k)], 4),
            }
            for k in keys
        }

    total = sum(n for (axis, _), n in answered.items() if axis == "family")
    return {
        "answered": total,
        "rate": round(sum(n for (a, _), n in accepted.items() if a == "family") / total, 4) if total else None,
        "per_family": rates("family"),
        "per_language": rates("language"),
        "per_model": rates("model"),
        "per_reason": {reason: round(n / total, 4) for reason, n in sorted(rejected.items()) if total},
    }


def _failure_reason(rec: Mapping | None, budget_stopped: bool, running: int = 0) -> str:
    if rec is None:
        return "budget" if budget_stopped else "batch_in_progress" if running else "not_sent"
    if rec["status"] == STATUS_REFUSED:
        return "refused"
    error = rec.get("error") or "unknown"
    return error.split(":", 1)[0]  # the exception class, e.g. RateLimitError


def _reject(rec: Mapping, kind: str, reason: str, meta: dict) -> dict:
    return {
        "request_id": rec["request_id"],
        "kind": kind,
        "family": rec["family"],
        "reason": reason,
        "raw": rec.get("content"),
        "finish_reason": rec.get("finish_reason"),
        **({"task": meta.get("task"), "language": meta.get("language")} if kind == "example" else {}),
    }
