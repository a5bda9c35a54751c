"""One run of requests against an endpoint, over one output folder.

``EndpointSession`` owns, for the run's lifetime, everything the stages above share: the folder's lock (a second
run stops at once, naming the first one's PID), the journal every answer goes to, the budget that reads it, the
client and back end (made on first use: a run with nothing left to send needs no key), and the response format
the endpoint enforces (asked once per folder, then read back from ``run_config.json``).

    async with EndpointSession(settings, folder, sampling={"temperature": 0.0}) as session:
        detection = await session.resolve_format()
        ...build requests with settings.request_params(sampling, detection["chosen"], ...)...
        await session.send(requests)
"""

from __future__ import annotations

from pathlib import Path

from .cost import Budget, load_price_table
from .endpoint import detect_response_format, make_backend, save_settings, stored_detection
from .journal import ObservedJournal, Request
from .lock import OutputLock
from .settings import EndpointArguments


class EndpointSession:
    def __init__(
        self,
        settings: EndpointArguments,
        folder: str | Path,
        sampling: dict,
        command: str = "e5-mistral generate",
        detection: dict | None = None,
    ):
        self.settings, self.folder, self.sampling = settings, Path(folder), sampling
        self.prices = load_price_table(settings.price_table)
        self.detection = detection or stored_detection(settings, self.folder)
        self._lock = OutputLock(self.folder, command=command)
        self._client = self._backend = None

    async def __aenter__(self) -> "EndpointSession":
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock.__enter__()
        self.journal = ObservedJournal(self.folder / "journal")
        self.budget = Budget(self.settings.max_cost, self.settings.max_total_tokens, self.prices).track(self.journal)
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            if self._client is not None:
                await self._client.close()
        finally:
            self.journal.close()
            self._lock.__exit__(*exc)

    @property
    def backend(self):
        """The online or batch back end, made on first use."""
        if self._backend is None:
            self._client, self._backend = make_backend(self.settings, self.folder, self.budget)
        return self._backend

    async def resolve_format(self) -> dict:
        """The response format, token cap and sampling the endpoint takes (asked once per folder), saved with the
        run's settings."""
        if self.detection is None:
            backend = self.backend if self.settings.backend == "online" else None
            self.detection = await detect_response_format(self.settings, backend, self.journal, self.sampling)
        save_settings(self.settings, self.folder, self.detection)
        return self.detection

    async def send(self, requests: list[Request]) -> None:
        """Send ``requests`` through the back end; every answer is journaled as it comes."""
        await self.backend.check_endpoint()
        await self.backend.run(requests, self.journal)

    @property
    def batches_running(self) -> int:
        """Batches the batch back end left running (``--batch-no-wait``); 0 online or when nothing was sent."""
        return self._backend.running if self._backend is not None else 0

    @property
    def stopped_by_budget(self) -> bool:
        return bool(self.budget.exhausted or (self._backend is not None and self._backend.stopped_by_budget))
