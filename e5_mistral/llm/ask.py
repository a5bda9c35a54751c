"""Ask an endpoint a list of one-shot questions and read the answers back: the loop every stage above the LLM layer
shares (the mining and filter judge, corpus query generation).

The requests are built once the endpoint's response format and token cap are known (they are part of every request
id); only those the journal has no usable answer for are sent, so a rerun pays nothing twice and a killed run
resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Callable

from .cost import usage_totals
from .formats import REASONING_ROOM
from .journal import STATUS_OK, Request, needs_sending
from .session import EndpointSession
from .settings import EndpointArguments


def ask(
    settings: EndpointArguments,
    folder: Path,
    sampling: dict,
    build: Callable[[dict], list[Request]],
    command: str,
    desc: str = "asking",
    hide_progress: bool = True,
) -> tuple[list[Request], list[dict | None], dict]:
    """(the requests ``build`` made from the request parameters; each one's journal record, or None when it has none;
    the counts with tokens and cost)."""
    return asyncio.run(_ask(settings, Path(folder), sampling, build, command, desc, hide_progress))


async def _ask(settings: EndpointArguments, folder: Path, sampling, build, command, desc, hide_progress):
    from tqdm.auto import tqdm

    async with EndpointSession(settings, folder, sampling, command=command) as session:
        detection = await session.resolve_format()
        # a reasoning model (max_completion_tokens, or only its default sampling) spends its hidden reasoning out
        # of the same cap first: short answers get room for it
        if detection.get("default_sampling") or detection.get("max_tokens_param") == "max_completion_tokens":
            settings = dataclasses.replace(settings, max_tokens=max(settings.max_tokens, REASONING_ROOM))
        params = settings.request_params(
            sampling, detection["chosen"], detection.get("max_tokens_param"), detection.get("default_sampling", False)
        )
        requests = build(params)
        by_id = {request.request_id: request for request in requests}
        latest = session.journal.latest()
        pending = [r for rid, r in by_id.items() if needs_sending(latest.get(rid), settings.retry_refused)]
        if pending:
            bar = tqdm(total=len(pending), desc=desc, unit="req", disable=hide_progress)
            session.journal.listeners.append(lambda record: bar.update(1))
            try:
                await session.send(pending)
            finally:
                bar.close()
        stopped = session.stopped_by_budget
    latest = session.journal.latest()
    records = [latest.get(request.request_id) for request in requests]
    paid = [r for r in session.journal.records() if r["request_id"] in by_id]
    failed = sum(1 for record in records if record is None or record["status"] != STATUS_OK)
    counts = {
        "requests": len(by_id),
        "requests_sent": sum(int(r.get("attempts") or 0) for r in paid),
        **usage_totals(paid, session.prices),
        "budget_stopped": stopped,
        "response_format": detection["chosen"],
        "model": settings.model,
        **({"failed_requests": failed} if failed and not stopped else {}),
    }
    return requests, records, counts
