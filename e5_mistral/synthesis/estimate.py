"""The pre-run estimate: what the requests a run still has to send can cost at most, from the plan alone.

Printed before any paid request (``--dry-run`` prints only this). Each request is counted at its worst case
(:func:`.cost.worst_case_tokens`: prompt bytes, completion cap), the bound that ``--max-cost`` and
``--max-total-tokens`` hold every request and batch file to. Examples whose tasks are not brainstormed yet are
sized with a task of ``ESTIMATED_TASK_CHARS`` characters (brainstormed tasks are one sentence).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..llm.cost import price_for, record_cost, worst_case_tokens
from ..llm.journal import STATUS_OK
from .plan import example_request, sample_slots
from .planner import FamilyPlan
from .templates import FIXED_TASKS


ESTIMATED_TASK_CHARS = 300
SLOT_SAMPLES = 32  # uses sampled per family to size examples whose tasks are unknown (the longest counts)


@dataclass
class RunEstimate:
    brainstorm_requests: int
    example_requests: int
    examples_without_tasks: int  # sized with a placeholder task
    prompt_tokens: int  # at most
    completion_tokens: int  # at most
    cost_usd: float | None  # at most; None when the price table has no price for the model
    batch: bool

    def describe(self) -> str:
        requests = self.brainstorm_requests + self.example_requests
        text = (
            f"estimate: {requests} requests to send ({self.brainstorm_requests} brainstorm, {self.example_requests} "
            f"examples), at most {self.prompt_tokens} prompt and {self.completion_tokens} completion tokens"
        )
        if self.cost_usd is not None:
            text += f", at most ${self.cost_usd:.4f}" + (" at batch prices" if self.batch else "")
        if self.examples_without_tasks:
            text += (
                f" ({self.examples_without_tasks} examples sized with a {ESTIMATED_TASK_CHARS}-character task: "
                "their tasks are not brainstormed yet)"
            )
        return text


def estimate(
    plans: list[FamilyPlan],
    latest: Mapping[str, dict],
    params: dict,
    seed: int,
    languages: Mapping[str, float],
    prices: Mapping,
    batch: bool = False,
    models: Sequence[str] = (),
) -> RunEstimate:
    def pending(request_id: str) -> bool:
        rec = latest.get(request_id)
        return rec is None or rec["status"] != STATUS_OK

    brainstorms = [r for fp in plans for r in fp.brainstorms if pending(r.request_id)]
    examples = [(fp, spec) for fp in plans for spec in fp.specs if pending(spec.request_id)]
    spent: dict[str, list[int]] = {}  # model -> [prompt, completion] tokens at most

    def count(model: str, prompt: int, completion: int, times: int = 1) -> None:
        total = spent.setdefault(model, [0, 0])
        total[0], total[1] = total[0] + times * prompt, total[1] + times * completion

    for request in itertools.chain(brainstorms, (fp.render(spec) for fp, spec in examples)):  # one at a time
        count(request.params.get("model"), *worst_case_tokens(request.body()))
    unplanned = 0
    for fp in plans:
        size = _unplanned_size(fp, seed, languages, params) if fp.tasks is None else None
        if size:  # at the priciest generator's rates: the model each example will draw is not known yet
            priciest = max(models or [params.get("model")], key=lambda m: _cost(m, *size, prices, batch))
            count(priciest, *size, times=fp.count)
            unplanned += fp.count
    prompt, completion = sum(p for p, _ in spent.values()), sum(c for _, c in spent.values())
    priced = all(price_for(prices, m) is not None for m in (models or [params.get("model")]))
    cost = sum(_cost(m, p, c, prices, batch) for m, (p, c) in spent.items()) if priced else None
    return RunEstimate(len(brainstorms), len(examples) + unplanned, unplanned, prompt, completion, cost, batch)


def _cost(model: str, prompt: int, completion: int, prices: Mapping, batch: bool) -> float:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    return record_cost({"model": model, "usage": usage, "source": "batch" if batch else ""}, prices)


def _unplanned_size(fp: FamilyPlan, seed: int, languages: Mapping[str, float], params: dict) -> tuple[int, int] | None:
    """The worst case of one example of a family without a task list yet: its longest sampled prompt."""
    task = FIXED_TASKS.get(fp.family, "x" * ESTIMATED_TASK_CHARS)
    sizes = [
        worst_case_tokens(
            example_request(
                fp.family, task, use, sample_slots(fp.family, seed, task, use, languages), params, seed
            ).body()
        )
        for use in range(min(fp.count, SLOT_SAMPLES))
    ]
    return max(sizes) if sizes else None
