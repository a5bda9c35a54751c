"""A synthesis run: plan -> run -> collect, over one output folder.

* plan (:mod:`.planner`): the requests, from the arguments and what the journal holds; pure.
* run: the brainstorm stage (with re-asks of unusable task lists), then the example stage, through a backend
  (:mod:`.endpoint`: online or the Batch API, one interface); every answer goes to the journal as it arrives.
* collect (:mod:`.collect`): rows, rejects and the report, recomputed from the journal every time, so a resumed
  run ends exactly where an uninterrupted one would.

The structured-output shape the endpoint enforces is found once per folder before planning (it is part of the
request ids). A lock on the folder keeps a second run out.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import Mapping

from ..llm.cost import load_price_table
from ..llm.endpoint import stored_detection
from ..llm.journal import STATUS_OK, Journal, needs_sending
from ..llm.session import EndpointSession
from .collect import RunResult, collect
from .config import SynthesisArguments
from .estimate import RunEstimate, estimate
from .parsing import Rejected, parse_example
from .plan import family_counts, resolve_languages, resolve_mix
from .planner import FamilyPlan, Planner


logger = logging.getLogger(__name__)


class SynthesisRun:
    def __init__(self, args: SynthesisArguments):
        args.check_runnable()
        self.args = args
        self.output = Path(args.output)
        self.prices = load_price_table(args.price_table)
        counts = family_counts(args.num_examples, resolve_mix(args.families, args.family_mix))
        self.languages = resolve_languages(args.languages)
        self.planner = Planner(args, counts, self.languages)
        # what `auto` found ({"chosen", "refused", "max_tokens_param"}); None until the endpoint was asked
        self.detection: dict | None = stored_detection(args, self.output)

    @property
    def params(self) -> dict:
        """The request parameters, with the resolved response format and token cap (part of every request id)."""
        detection = self.detection or {}
        return self.args.generation_params(
            detection.get("chosen", "none"),
            detection.get("max_tokens_param"),
            detection.get("default_sampling", False),
        )

    def plan(self, latest: Mapping[str, dict]) -> list[FamilyPlan]:
        return self.planner.plan(latest, self.params)

    def estimate(self) -> RunEstimate:
        """What the requests still to send can cost at most (reads the journal; sends and writes nothing)."""
        folder = self.output / "journal"
        latest = Journal(folder).latest() if folder.is_dir() else {}
        return estimate(
            self.plan(latest),
            latest,
            self.params,
            self.args.seed,
            self.languages,
            self.prices,
            batch=self.args.backend == "batch",
            models=list(self.args.generators()),
        )

    def run(self, progress: bool | None = None) -> RunResult:
        hide_progress = self.args.no_progress if progress is None else not progress
        return asyncio.run(self._run(hide_progress))

    async def _run(self, hide_progress: bool) -> RunResult:
        async with EndpointSession(self.args, self.output, self.args.sampling(), detection=self.detection) as session:
            self.detection = await session.resolve_format()
            plans = await self._execute(session, hide_progress)
            state = {
                "detection": self.detection,
                "budget_stopped": session.stopped_by_budget,
                "batches_running": session.batches_running,
            }
            result = collect(plans, self.planner, session.journal, self.args, self.prices, state)  # inside the lock
        if state["budget_stopped"]:
            logger.warning(
                "budget reached: stopped sending requests; rerun the same command (with a larger budget) to resume"
            )
        return result

    async def _execute(self, session: EndpointSession, hide_progress: bool) -> list[FamilyPlan]:
        """Send what the plan still needs: brainstorms (and re-asks of unusable task lists), then examples. Returns
        the plan as the journal now stands. The journal is read once, when the session opens; the plan is made
        again only after brainstorm answers, which decide the task lists."""
        journal, budget = session.journal, session.budget
        latest = journal.latest()  # kept current as answers are written
        plans = self.plan(latest)
        todo = [r for fp in plans for r in fp.brainstorms if self._pending(r.request_id, latest)]
        if not todo and not any(self._pending(spec.request_id, latest) for fp in plans for spec in fp.specs):
            return plans  # nothing to send: no client, no key needed
        backend = session.backend
        await backend.check_endpoint()
        for _ in range(self.args.reask_limit() + 1):  # a stage per round of re-asks for unusable task lists
            if not todo or session.stopped_by_budget or session.batches_running:
                break  # (batches running: their task lists come with a later run)
            await self._stage("brainstorm", backend, todo, journal, budget, hide_progress)
            plans = self.plan(latest)
            # next round: only the new re-asks; requests that failed wait for the next run
            todo = [r for fp in plans for r in fp.brainstorms if r.request_id not in latest]
        if not session.stopped_by_budget:
            pending = [(fp, spec) for fp in plans for spec in fp.specs if self._pending(spec.request_id, latest)]
            if pending:
                requests = (fp.render(spec) for fp, spec in pending)  # rendered as they are sent
                await self._stage("examples", backend, requests, journal, budget, hide_progress, len(pending))
        return plans

    async def _stage(self, name, backend, requests, journal, budget, hide_progress, total=None) -> None:
        from tqdm.auto import tqdm

        counts = Counter()
        bar = tqdm(total=len(requests) if total is None else total, desc=name, unit="req", disable=hide_progress)

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

    def _pending(self, request_id: str, latest: Mapping[str, dict]) -> bool:
        """Not answered yet: never sent, or failed (a refused request only with ``--retry-refused``)."""
        return needs_sending(latest.get(request_id), self.args.retry_refused)


def generate(args: SynthesisArguments, progress: bool | None = None) -> RunResult:
    """Run (or resume) the synthesis described by ``args``."""
    return SynthesisRun(args).run(progress=progress)
