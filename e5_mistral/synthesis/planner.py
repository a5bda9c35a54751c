"""The plan of a synthesis run: which requests it makes, from its arguments and what the journal holds.

Pure: no requests and no writes. Brainstorm requests come first; a family's tasks exist once every one of its
brainstorm calls has an answer (failed calls are left out), and its example requests follow from the tasks, the
seeded slots and the request parameters (with the resolved response format and token cap).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping

from ..llm.journal import STATUS_OK, Request
from ..llm.settings import is_reasoning_model
from ..text import match_key
from .config import SynthesisArguments
from .parsing import Rejected, parse_brainstorm_answer
from .plan import (
    assign_tasks,
    brainstorm_calls,
    brainstorm_request,
    example_id,
    example_request,
    needs_brainstorm,
    rng_for,
    sample_slots,
    task_uses,
)
from .templates import template_version


@dataclass(frozen=True, slots=True)
class ExampleSpec:
    """One planned example: what defines it and its request id. Its prompt is rendered only when it is sent, so a
    plan of 500k examples holds ids and slots, not prompts."""

    request_id: str
    family: str
    task: str
    use: int
    slots: dict
    model: str

    @property
    def language(self) -> str:
        return self.slots.get("language") or self.slots["src_lang"]


@dataclass
class FamilyPlan:
    family: str
    count: int
    brainstorms: list[Request]  # per brainstorm call, the request that counts (the last re-ask)
    tasks: list[str] | None = None  # None until every brainstorm request has an answer
    task_stats: Counter = field(default_factory=Counter)
    specs: list[ExampleSpec] = field(default_factory=list)
    brainstorm_history: list[Request] = field(default_factory=list)  # every brainstorm request asked, re-asks included
    render: Callable[[ExampleSpec], Request] | None = None  # a spec's request, with the plan's parameters
    meta: Callable[[ExampleSpec], dict] | None = None  # a spec's row metadata

    @property
    def examples(self) -> list[tuple[Request, dict]]:
        """Every example's request and row metadata, rendered at once (small plans; a run renders as it sends)."""
        return [(self.render(spec), self.meta(spec)) for spec in self.specs]


class Planner:
    """Builds a run's plan; a run plans again only when brainstorm answers changed a task list, and then the example
    specs of an unchanged task list are kept."""

    def __init__(self, args: SynthesisArguments, counts: dict[str, int], languages: dict[str, float]):
        self.args, self.counts, self.languages = args, counts, languages
        self.generators = args.generators()
        self.params: dict = {}
        self._dedup_cache: dict[tuple, tuple[list[str], int]] = {}
        self._specs_cache: dict[str, tuple[tuple, list[ExampleSpec]]] = {}  # family -> (key, specs)

    def plan(self, latest: Mapping[str, dict], params: dict) -> list[FamilyPlan]:
        """Every family's brainstorm requests, tasks (once answered) and example specs; pure (no I/O)."""
        self.params = params
        plans = []
        for family, count in self.counts.items():
            calls = brainstorm_calls(count, self.args.examples_per_task) if needs_brainstorm(family) else 0
            fp = FamilyPlan(family, count, [], render=self.request, meta=self.meta)
            for index in range(calls):
                fp.brainstorms.append(self._brainstorm(family, index, latest, fp.task_stats, fp.brainstorm_history))
            if needs_brainstorm(family):
                self._resolve_tasks(fp, latest)
            else:
                fp.tasks = []
            if fp.tasks is not None:
                fp.specs = self._specs(family, count, tuple(fp.tasks))
            plans.append(fp)
        return plans

    def request(self, spec: ExampleSpec) -> Request:
        params = self._params_for(spec.model)
        return example_request(
            spec.family, spec.task, spec.use, spec.slots, params, self.args.seed, rid=spec.request_id
        )

    def _params_for(self, model: str) -> dict:
        """The request parameters of one generator: ``--model``'s as the endpoint answered its probe; another model
        of ``--generator-mix`` resolved the same way by its name (a reasoning model gets max_completion_tokens and
        no sampling), with the response format the probe found."""
        if model == self.params.get("model"):
            return self.params
        reasoning = is_reasoning_model(model)
        cap = "max_completion_tokens" if reasoning else self.args.default_max_tokens_param(model)
        return self.args.generation_params(self.params.get("response_format", "none"), cap, reasoning, model=model)

    def _model(self, family: str, key) -> str:
        """The generator of one request: ``--model``, or a seeded draw from ``--generator-mix``."""
        models = self.generators
        if len(models) == 1:
            return next(iter(models))
        return rng_for(self.args.seed, family, key, "model").choices(list(models), weights=list(models.values()))[0]

    def meta(self, spec: ExampleSpec) -> dict:
        """The row's columns that come from the plan."""
        return {
            "request_id": spec.request_id,
            "family": spec.family,
            "task": spec.task,
            "language": spec.language,
            "slots": spec.slots,
            "template_version": template_version(spec.family, "generate"),
            "generator_model": spec.model,
        }

    def _specs(self, family: str, count: int, tasks: tuple[str, ...]) -> list[ExampleSpec]:
        """The example specs for a family's task list, built once per task list (seeded sampling and hashing)."""
        cached = self._specs_cache.get(family)
        key = (count, tasks, json.dumps(self.params, sort_keys=True))
        if cached is None or cached[0] != key:  # only a family's current task list is asked for again
            specs = []
            row_tasks = assign_tasks(family, list(tasks), count, self.args.seed)
            for task, use in zip(row_tasks, task_uses(row_tasks)):
                slots = sample_slots(family, self.args.seed, task, use, self.languages)
                model = self._model(family, json.dumps([task, use], ensure_ascii=False))
                rid = example_id(family, task, use, slots, self._params_for(model), self.args.seed)
                specs.append(ExampleSpec(rid, family, task, use, slots, model))
            cached = self._specs_cache[family] = (key, specs)
        return cached[1]

    def _brainstorm(
        self, family: str, index: int, latest: Mapping[str, dict], stats: Counter, history: list
    ) -> Request:
        """The request that stands for brainstorm call ``index``: asked again while its answer is unusable."""
        limit = self.args.reask_limit()
        for reask in range(limit + 1):
            request = brainstorm_request(family, index, self._params_for(self._model(family, index)), reask)
            history.append(request)
            rec = latest.get(request.request_id)
            if rec is None or rec["status"] != STATUS_OK or reask == limit:
                break
            try:
                self.tasks_of(rec)
                break
            except Rejected:
                stats["reasked"] += 1
        return request

    def tasks_of(self, rec: dict) -> tuple[list[str], bool]:
        """A brainstorm answer's tasks and whether they came from a plain-text list; the one parse the run's
        re-asks, task lists and report all use, so they agree."""
        return parse_brainstorm_answer(
            rec["content"], rec["finish_reason"], accept_text_lists=self.args.accept_text_task_lists
        )

    def _resolve_tasks(self, fp: FamilyPlan, latest: Mapping[str, dict]) -> None:
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
                listed, from_text = self.tasks_of(rec)
            except Rejected as err:
                fp.task_stats[f"rejected:{err.reason}"] += 1
                continue
            fp.task_stats["from_text_lists"] += from_text
            fp.task_stats["generated"] += len(listed)
            for task in listed:
                if match_key(task) not in seen:
                    seen.add(match_key(task))
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
            from . import dedup

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
