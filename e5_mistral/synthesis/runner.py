"""A synthesis run: brainstorm -> tasks -> example plan -> answers -> parsed rows, report and dataset.

Everything downstream of the journal is recomputed from it on every run, so a resumed run ends exactly where
an uninterrupted one would: ``report.json`` is cumulative and its invariant holds by construction
(every planned example is accepted, rejected, a duplicate or failed).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .config import SynthesisArguments
from .cost import Budget, load_price_table, price_for, record_cost
from .journal import STATUS_FAILED, STATUS_OK, STATUS_REFUSED, Journal, Request, make_record
from .parsing import Rejected, normalize, parse_brainstorm_answer, parse_example
from .plan import (
    assign_tasks,
    brainstorm_calls,
    brainstorm_request,
    example_request,
    family_counts,
    needs_brainstorm,
    request_id,
    resolve_languages,
    resolve_mix,
    sample_slots,
)
from .structured import SCHEMA_FORMATS, detect
from .templates import DEDUP_KEY, template_version


logger = logging.getLogger(__name__)


class ObservedJournal(Journal):
    """A journal that tells listeners (budget, progress bar) about every record it writes."""

    def __init__(self, directory, listeners: list[Callable[[dict], None]] | None = None):
        super().__init__(directory)
        self.listeners = listeners or []

    def append(self, record: dict) -> None:
        super().append(record)
        for listener in self.listeners:
            listener(record)


@dataclass
class FamilyPlan:
    family: str
    count: int
    brainstorms: list[Request]  # per brainstorm call, the request that counts (the last re-ask)
    tasks: list[str] | None = None  # None until every brainstorm request has an answer
    task_stats: Counter = field(default_factory=Counter)
    examples: list[tuple[Request, dict]] = field(default_factory=list)  # (request, row metadata)
    brainstorm_history: list[Request] = field(default_factory=list)  # every brainstorm request asked, re-asks included


@dataclass
class RunResult:
    report: dict
    rows: list[dict]
    rejects: list[dict]
    output: Path


class SynthesisRun:
    def __init__(self, args: SynthesisArguments):
        if not args.output:
            raise ValueError("--output is required")
        if not args.model:
            raise ValueError("--model is required")
        self.args = args
        self.output = Path(args.output)
        self.languages = resolve_languages(args.languages)
        self.counts = family_counts(args.num_examples, resolve_mix(args.families, args.family_mix))
        if self.counts.get("bitext") and len(self.languages) < 2:
            raise ValueError("bitext needs at least two languages (source and target must differ)")
        # what `auto` found ({"chosen", "refused"}); None until the endpoint was asked (or an earlier run's answer)
        self.detection: dict | None = self._stored_detection()
        self.response_format = self.detection["chosen"] if self.detection else None
        self.prices = load_price_table(args.price_table)
        if args.max_cost is not None and price_for(self.prices, args.model) is None:
            raise ValueError(f"--max-cost needs a price for model {args.model!r} in --price-table")
        self._dedup_cache: dict[tuple, tuple[list[str], int]] = {}
        self._examples_cache: dict[str, tuple[tuple, list[tuple[Request, dict]]]] = {}  # family -> (key, plan)
        self.batches_running = 0  # batches the batch backend left running (--batch-no-wait)

    @property
    def params(self) -> dict:
        return self.args.generation_params(self.response_format or "none")

    # -- structured outputs --------------------------------------------------------------------------------
    def _stored_detection(self) -> dict | None:
        """The format to send without asking: ``none`` when asked for, else what an earlier run of the same
        endpoint and model settled on (so a resumed run keeps its ids and needs no probe)."""
        if self.args.response_format == "none":
            return {"chosen": "none", "refused": {}}
        previous = self.output / "run_config.json"
        if not previous.is_file():
            return None
        try:
            old = json.loads(previous.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None
        if "response_format" not in old and all(old.get(k) == getattr(self.args, k) for k in ("model", "base_url")):
            return {"chosen": "none", "refused": {}}  # a run from before structured outputs: keep its request ids
        same = all(old.get(k) == getattr(self.args, k) for k in ("response_format", "model", "base_url", "backend"))
        resolved = old.get("response_format_resolved") or {}
        return resolved if same and resolved.get("chosen") in ("none",) + SCHEMA_FORMATS else None

    async def _detect_response_format(self, journal: Journal) -> str:
        """Ask the endpoint once which schema shape it enforces (``auto``), or check the one asked for. Every probe
        attempt is journaled like any request, so the report counts its requests and tokens."""
        import openai

        from .online import FATAL_STATUS, EndpointError

        requested = self.args.response_format
        if self.args.backend == "batch":  # the Batch API is OpenAI's: its chat endpoint takes json_schema
            self.detection = {"chosen": "json_schema" if requested == "auto" else requested, "refused": {}}
            return self.detection["chosen"]
        backend = self._backend(Budget(None, None, self.prices))

        async def send(body: dict):
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
            journal.append(
                make_record(
                    probe,
                    STATUS_OK,
                    usage={
                        "prompt_tokens": usage.get("prompt_tokens") or 0,
                        "completion_tokens": usage.get("completion_tokens") or 0,
                    },
                )
            )
            return answer

        try:
            await backend.check_endpoint()
            try:
                found = await detect(
                    lambda body: backend.retry_rate_limits(send, body),
                    self.args.generation_params(),
                    SCHEMA_FORMATS if requested == "auto" else (requested,),
                )
            except openai.APIStatusError as err:
                reason = FATAL_STATUS.get(
                    err.status_code, "the endpoint failed while asked which JSON schema shape it enforces"
                )
                raise EndpointError(
                    f"{reason} (HTTP {err.status_code} from {backend.endpoint}): {err.message}"
                ) from None
            except openai.APIConnectionError as err:
                raise EndpointError(f"cannot reach the endpoint {backend.endpoint} ({type(err).__name__})") from None
        finally:
            await self._client.close()
        self.detection = found.to_dict()
        if requested != "auto" and found.chosen != requested:
            raise ValueError(
                f"the endpoint does not enforce --response-format {requested} "
                f"({found.refused[requested]}); use --response-format auto or none"
            )
        if found.chosen == "none":
            logger.warning(
                "the endpoint enforces no JSON schema (%s); sending requests without response_format",
                "; ".join(f"{mode}: {why}" for mode, why in found.refused.items()),
            )
        return found.chosen

    # -- plan ----------------------------------------------------------------------------------------------
    def plan(self, latest: dict[str, dict]) -> list[FamilyPlan]:
        plans = []
        for family, count in self.counts.items():
            calls = brainstorm_calls(count, self.args.examples_per_task) if needs_brainstorm(family) else 0
            fp = FamilyPlan(family, count, [])
            for index in range(calls):
                fp.brainstorms.append(self._brainstorm(family, index, latest, fp.task_stats, fp.brainstorm_history))
            if needs_brainstorm(family):
                self._resolve_tasks(fp, latest)
            else:
                fp.tasks = []
            if fp.tasks is not None:
                fp.examples = self._examples(family, count, tuple(fp.tasks))
            plans.append(fp)
        return plans

    def _examples(self, family: str, count: int, tasks: tuple[str, ...]) -> list[tuple[Request, dict]]:
        """The example requests for a family's task list, built once: a run plans up to four times (before and
        after each stage, and for the report) and a request costs seeded sampling, rendering and hashing."""
        cached = self._examples_cache.get(family)
        if cached is None or cached[0] != (count, tasks):  # only a family's current task list is asked for again
            examples = []
            for index, task in enumerate(assign_tasks(family, list(tasks), count, self.args.seed)):
                slots = sample_slots(family, self.args.seed, index, self.languages)
                request = example_request(family, index, task, slots, self.params)
                meta = {
                    "request_id": request.request_id,
                    "family": family,
                    "task": task,
                    "language": slots.get("language") or slots["src_lang"],
                    "slots": slots,
                    "template_version": template_version(family, "generate"),
                    "generator_model": self.args.model,
                }
                examples.append((request, meta))
            cached = self._examples_cache[family] = ((count, tasks), examples)
        return cached[1]

    def _brainstorm(self, family: str, index: int, latest: dict[str, dict], stats: Counter, history: list) -> Request:
        """The request that stands for brainstorm call ``index``: asked again while its answer is unusable."""
        limit = self.args.reask_limit()
        for reask in range(limit + 1):
            request = brainstorm_request(family, index, self.params, reask)
            history.append(request)
            rec = latest.get(request.request_id)
            if rec is None or rec["status"] != STATUS_OK or reask == limit:
                break
            try:
                self._tasks_of(rec)
                break
            except Rejected:
                stats["reasked"] += 1
        return request

    def _tasks_of(self, rec: dict) -> tuple[list[str], bool]:
        """A brainstorm answer's tasks and whether they came from a plain-text list; the one parse the run's
        re-asks, task lists and report all use, so they agree."""
        return parse_brainstorm_answer(
            rec["content"], rec["finish_reason"], accept_text_lists=self.args.accept_text_task_lists
        )

    def _resolve_tasks(self, fp: FamilyPlan, latest: dict[str, dict]) -> None:
        """The family's tasks once every brainstorm call has an answer; calls that failed are left out, so a
        family goes on with the tasks it has (they are asked again by the next run)."""
        records = [latest.get(r.request_id) for r in fp.brainstorms]
        answered = [rec for rec in records if rec is not None and rec["status"] == STATUS_OK]
        if any(rec is None for rec in records) or (records and not answered):
            return
        fp.task_stats["brainstorm_failed"] = len(records) - len(answered)
        tasks, seen = [], set()
        for rec in answered:
            try:
                listed, from_text = self._tasks_of(rec)
            except Rejected as err:
                fp.task_stats[f"rejected:{err.reason}"] += 1
                continue
            fp.task_stats["from_text_lists"] += from_text
            fp.task_stats["generated"] += len(listed)
            for task in listed:
                if normalize(task) not in seen:
                    seen.add(normalize(task))
                    tasks.append(task)
        fp.task_stats["removed_duplicate"] = fp.task_stats["generated"] - len(tasks)
        tasks, removed = self._near_dedup(tasks)
        fp.task_stats["removed_near_duplicate"] = removed
        fp.task_stats["unique"] = len(tasks)
        fp.tasks = tasks

    def _near_dedup(self, tasks: list[str]) -> tuple[list[str], int]:
        mode = self.args.dedup_tasks
        if mode == "none" or len(tasks) < 2:
            return tasks, 0
        key = (mode, tuple(tasks))
        if key not in self._dedup_cache:
            try:
                from . import dedup
            except ImportError as err:
                raise RuntimeError(f"--dedup-tasks {mode} needs e5_mistral.synthesis.dedup ({err})") from None
            if mode == "minhash":
                kwargs = {} if self.args.dedup_threshold is None else {"threshold": self.args.dedup_threshold}
                keep = dedup.near_duplicate_mask(tasks, **kwargs)
            else:
                model = self.args.dedup_model
                if model is None:
                    from ..local_models import minilm_path

                    model = str(minilm_path())
                kwargs = {} if self.args.dedup_threshold is None else {"threshold": self.args.dedup_threshold}
                keep = dedup.semantic_duplicate_mask(tasks, model, **kwargs)
            kept = [t for t, k in zip(tasks, keep) if k]
            self._dedup_cache[key] = (kept, len(tasks) - len(kept))
        return self._dedup_cache[key]

    # -- execution -----------------------------------------------------------------------------------------
    def run(self, progress: bool | None = None) -> RunResult:
        self.output.mkdir(parents=True, exist_ok=True)
        journal = ObservedJournal(self.output / "journal")
        try:
            if self.response_format is None:
                self.response_format = asyncio.run(self._detect_response_format(journal))
            run_config = {**self.args.public_dict(), "response_format_resolved": self.detection}
            (self.output / "run_config.json").write_text(json.dumps(run_config, indent=2) + "\n", encoding="utf-8")
            budget = Budget(self.args.max_cost, self.args.max_total_tokens, self.prices)
            for record in journal.records():  # money already spent counts against the budget
                budget.add(record)
            journal.listeners.append(budget.add)
            stopped = asyncio.run(
                self._execute(journal, budget, self.args.no_progress if progress is None else not progress)
            )
        finally:
            journal.close()
        result = self.finalize(journal.latest(), budget_stopped=stopped)
        if stopped:
            logger.warning(
                "budget reached: stopped sending requests; rerun the same command (with a larger budget) to resume"
            )
        return result

    async def _execute(self, journal: ObservedJournal, budget: Budget, hide_progress: bool) -> bool:
        latest = journal.latest()
        plans = self.plan(latest)
        todo = [r for fp in plans for r in fp.brainstorms if self._pending(r, latest)]
        if not todo and not any(self._pending(r, latest) for fp in plans for r, _ in fp.examples):
            return False  # nothing to send: no client, no key needed
        backend = self._backend(budget)
        try:
            if hasattr(backend, "check_endpoint"):
                await backend.check_endpoint()
            for _ in range(self.args.reask_limit() + 1):  # a stage per round of re-asks for unusable task lists
                if not todo or budget.exhausted or getattr(backend, "stopped_by_budget", False):
                    break
                await self._stage("brainstorm", backend, todo, journal, budget, hide_progress)
                latest = journal.latest()
                # next round: only the new re-asks; requests that failed wait for the next run
                todo = [r for fp in self.plan(latest) for r in fp.brainstorms if r.request_id not in latest]
            if not budget.exhausted and not getattr(backend, "stopped_by_budget", False):
                todo = [r for fp in self.plan(latest) for r, _ in fp.examples if self._pending(r, latest)]
                if todo:
                    await self._stage("examples", backend, todo, journal, budget, hide_progress)
        finally:
            await self._client.close()
        self.batches_running = int(getattr(backend, "running", 0) or 0)
        return bool(getattr(backend, "stopped_by_budget", False) or budget.exhausted)

    async def _stage(self, name, backend, requests, journal, budget, hide_progress) -> None:
        from tqdm.auto import tqdm

        counts = Counter()
        bar = tqdm(total=len(requests), desc=name, unit="req", disable=hide_progress)

        def on_record(record: dict) -> None:
            bar.update(1)
            if record["status"] != STATUS_OK:
                counts["failed"] += 1
            elif record["kind"] == "example":
                try:
                    parse_example(record["family"], record["content"], record["finish_reason"])
                    counts["accepted"] += 1
                except Rejected:
                    counts["rejected"] += 1
            bar.set_postfix(
                accepted=counts["accepted"],
                rejected=counts["rejected"],
                failed=counts["failed"],
                tokens=budget.tokens,
                cost=f"${budget.cost:.4f}",
                refresh=False,
            )

        journal.listeners.append(on_record)
        try:
            await backend.run(requests, journal)
        finally:
            journal.listeners.remove(on_record)
            bar.close()

    def _backend(self, budget: Budget):
        import openai

        from .online import make_http_client

        args = self.args
        api_key = args.api_key()
        if args.azure_api_version and not args.base_url:
            raise ValueError("--azure-api-version needs --base-url (the Azure endpoint)")
        # aiohttp only where CPU per request matters; the batch backend uploads files through httpx
        common = dict(
            api_key=api_key,
            max_retries=0,
            timeout=args.timeout,
            http_client=make_http_client(args.http_client) if args.backend == "online" else None,
        )
        if args.azure_api_version:
            self._client = openai.AsyncAzureOpenAI(
                azure_endpoint=args.base_url, api_version=args.azure_api_version, **common
            )
        else:
            self._client = openai.AsyncOpenAI(base_url=args.base_url, **common)
        if args.backend == "batch":
            try:
                from .batch import BatchBackend
            except ImportError as err:
                raise RuntimeError(f"--backend batch needs e5_mistral.synthesis.batch ({err})") from None
            return BatchBackend(
                self._client, self.output, poll_interval=args.batch_poll_interval, wait=not args.batch_no_wait
            )
        from .online import OnlineBackend

        return OnlineBackend(
            self._client,
            concurrency=args.concurrency,
            rpm=args.rpm,
            tpm=args.tpm,
            max_attempts=args.max_attempts,
            initial_wait=args.retry_initial_wait,
            max_wait=args.retry_max_wait,
            budget=budget,
            endpoint=args.base_url or "the OpenAI API",
        )

    def _pending(self, request: Request, latest: dict[str, dict]) -> bool:
        """Not answered yet: never sent, or failed (a refused request only with ``--retry-refused``)."""
        rec = latest.get(request.request_id)
        return (
            rec is None
            or rec["status"] == STATUS_FAILED
            or (rec["status"] == STATUS_REFUSED and self.args.retry_refused)
        )

    # -- results -------------------------------------------------------------------------------------------
    def finalize(self, latest: dict[str, dict], budget_stopped: bool = False) -> RunResult:
        """Parse every answer of the plan, dedup, write report.json, rejected.jsonl, diversity.json, dataset/."""
        from .dataset import write_outputs

        rows, rejects, failed_reasons = [], [], Counter()
        rejected, per_family = Counter(), {}
        duplicates = 0
        brainstorm = Counter()
        answered, accepted = Counter(), Counter()  # (family or language) -> examples answered / accepted
        plans = self.plan(latest)
        for fp in plans:
            stats = Counter(planned=fp.count)
            brainstorm["planned"] += len(fp.brainstorms)
            for request in fp.brainstorms:
                rec = latest.get(request.request_id)
                brainstorm["ok" if rec and rec["status"] == STATUS_OK else "failed"] += 1
            for request in fp.brainstorm_history:
                rec = latest.get(request.request_id)
                if rec and rec["status"] == STATUS_OK:
                    try:
                        self._tasks_of(rec)
                    except Rejected as err:
                        rejects.append(_reject(rec, "brainstorm", err.reason, {"family": fp.family}))
            for key, value in fp.task_stats.items():
                brainstorm[key if not key.startswith("rejected:") else "rejected"] += value
            if fp.tasks is None:  # brainstorm not finished: these examples could not be planned yet
                stats["failed"] += fp.count
                failed_reasons["brainstorm_incomplete"] += fp.count
            elif fp.count and not fp.examples:
                stats["rejected"] += fp.count
                rejected["no_valid_tasks"] += fp.count
            seen = set()
            for request, meta in fp.examples:
                rec = latest.get(request.request_id)
                if rec is None or rec["status"] != STATUS_OK:
                    stats["failed"] += 1
                    failed_reasons[_failure_reason(rec, budget_stopped, self.batches_running)] += 1
                    continue
                answered.update((("family", fp.family), ("language", meta["language"])))
                try:
                    fields = parse_example(fp.family, rec["content"], rec["finish_reason"])
                except Rejected as err:
                    stats["rejected"] += 1
                    rejected[err.reason] += 1
                    rejects.append(_reject(rec, "example", err.reason, meta))
                    continue
                key = normalize(fields[DEDUP_KEY[fp.family]])
                if key in seen:
                    stats["duplicates_removed"] += 1
                    duplicates += 1
                    continue
                seen.add(key)
                stats["accepted"] += 1
                accepted.update((("family", fp.family), ("language", meta["language"])))
                rows.append({**meta, "generator_model": rec.get("model") or meta["generator_model"], **fields})
            per_family[fp.family] = {
                k: stats[k] for k in ("planned", "accepted", "rejected", "duplicates_removed", "failed")
            }

        records = list(Journal(self.output / "journal").records())  # reading opens no new file
        report = {
            "planned": sum(fp.count for fp in plans),
            "requests_sent": sum(int(r.get("attempts") or 0) for r in records),
            "responses_ok": sum(1 for r in latest.values() if r["status"] == STATUS_OK and r["kind"] != "probe"),
            "accepted": len(rows),
            "rejected": dict(sorted(rejected.items())),
            "duplicates_removed": duplicates,
            "failed": sum(failed_reasons.values()),
            "failed_reasons": dict(sorted(failed_reasons.items())),
            "prompt_tokens": sum((r.get("usage") or {}).get("prompt_tokens", 0) for r in records),
            "completion_tokens": sum((r.get("usage") or {}).get("completion_tokens", 0) for r in records),
            "estimated_cost_usd": round(sum(record_cost(r, self.prices) for r in records), 6),
            "cost_priced": price_for(self.prices, self.args.model) is not None,
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
            "per_family": per_family,
            "per_language": dict(Counter(row["language"] for row in rows).most_common()),
            "acceptance": _acceptance(answered, accepted, rejected),
            "response_format": self.detection or {"chosen": "none", "refused": {}},
            "generator_models": sorted({row["generator_model"] for row in rows}),
            "budget_stopped": budget_stopped,
            "batches_running": self.batches_running,
            "seed": self.args.seed,
        }
        report["complete"] = report["failed"] == 0
        write_outputs(self.output, report, rows, rejects, self.args)  # rows in plan order: family, then row index
        return RunResult(report, rows, rejects, self.output)


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
        "per_reason": {reason: round(n / total, 4) for reason, n in sorted(rejected.items()) if total},
    }


def _failure_reason(rec: dict | None, budget_stopped: bool, batches_running: int = 0) -> str:
    if rec is None:
        return "budget" if budget_stopped else "batch_in_progress" if batches_running else "not_sent"
    if rec["status"] == STATUS_REFUSED:
        return "refused"
    error = rec.get("error") or "unknown"
    return error.split(":", 1)[0]  # the exception class, e.g. RateLimitError


def _reject(rec: dict, kind: str, reason: str, meta: dict) -> dict:
    return {
        "request_id": rec["request_id"],
        "kind": kind,
        "family": rec["family"],
        "reason": reason,
        "raw": rec.get("content"),
        "finish_reason": rec.get("finish_reason"),
        **({"task": meta.get("task"), "language": meta.get("language")} if kind == "example" else {}),
    }


def generate(args: SynthesisArguments, progress: bool | None = None) -> RunResult:
    """Run (or resume) the synthesis described by ``args``."""
    return SynthesisRun(args).run(progress=progress)
