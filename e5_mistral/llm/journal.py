"""The request plan's unit and the append-only journal of responses: the contract every backend honours.

A run is a deterministic list of :class:`Request` (ids derived from the plan, never from time). Every answer,
online or from a batch file, is appended to ``OUTPUT/journal/*.jsonl`` as one JSON line, flushed to the OS
as it arrives, so a SIGKILL loses at most the requests in flight. On restart, ids with an ``ok`` record are
never requested again. The journal never holds API keys or request headers.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol


STATUS_OK = "ok"  # an answer came back (it may still be rejected by parsing later)
STATUS_FAILED = "failed"  # retries exhausted or a fatal error; retried on the next run
STATUS_REFUSED = "refused"  # a non-retryable 4xx (the request itself is wrong); sent again only when asked


def needs_sending(record: dict | None, retry_refused: bool = False) -> bool:
    """Whether a request whose latest journal record is ``record`` is sent (again): never sent, or failed; a refused
    one only when asked."""
    return (
        record is None or record["status"] == STATUS_FAILED or (record["status"] == STATUS_REFUSED and retry_refused)
    )


@dataclass(frozen=True)
class Request:
    """One chat-completion call of the plan."""

    request_id: str  # stable content hash of (kind, family, slots, task, template version, model, params)
    kind: str  # "brainstorm" or "example"
    family: str
    messages: tuple  # ({"role": ..., "content": ...}, ...)
    params: dict = field(default_factory=dict, hash=False)  # model, temperature, top_p, max_tokens, extra_body...

    def body(self) -> dict:
        """The chat-completions request body (also one line of an OpenAI Batch file)."""
        params = dict(self.params)
        extra = params.pop("extra_body", None) or {}
        return {"messages": [dict(m) for m in self.messages], **params, **extra}


def request_id(payload: Mapping) -> str:
    """A request's id: the hash of everything that decides its answer (never time, never the key)."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
    return sys.intern(digest)  # the plan and the journal's index then share one string per id


def chat_request(
    rid: str, kind: str, family: str, prompt: str, params: Mapping, response_format: dict | None = None
) -> Request:
    """One chat request: ``prompt`` as the user turn, after ``params["system_prompt"]`` when set.

    The system prompt and the sampling seed are part of the id (in ``params``) but travel otherwise: the first as a
    message, the second as the request's own ``seed`` (derived from its id: repeatable, yet different for two
    requests with the same prompt). ``params["response_format"]`` names the format; ``response_format`` is what is
    sent (the caller's schema in that shape)."""
    user = {"role": "user", "content": prompt}
    system = params.get("system_prompt")
    messages = ({"role": "system", "content": system}, user) if system else (user,)
    body = {k: v for k, v in params.items() if k not in ("system_prompt", "sampling_seed", "response_format")}
    if "response_format" in params and response_format is not None:
        body["response_format"] = response_format
    if "sampling_seed" in params:
        body["seed"] = int(rid[:8], 16) & 0x7FFFFFFF
    return Request(rid, kind, family, messages, body)


def make_record(
    request: Request,
    status: str,
    *,
    content: str | None = None,
    finish_reason: str | None = None,
    usage: dict | None = None,
    error: str | None = None,
    attempts: int = 1,
    source: str = "online",
) -> dict:
    """A journal line. ``usage`` is ``{"prompt_tokens": int, "completion_tokens": int}``."""
    return {
        "request_id": request.request_id,
        "kind": request.kind,
        "family": request.family,
        "status": status,
        "content": content,
        "finish_reason": finish_reason,
        "usage": usage or {"prompt_tokens": 0, "completion_tokens": 0},
        "error": error,
        "attempts": attempts,
        "model": request.params.get("model"),
        "source": source,
        "time": time.time(),
    }


class JournalEntry:
    """A journal record without its answer: what a stage keeps per request id. ``entry["content"]`` (or any field
    not kept) reads the record back from its line, so memory stays flat however long the answers are."""

    __slots__ = ("status", "kind", "family", "model", "finish_reason", "error", "_path", "_offset")
    KEPT = ("status", "kind", "family", "model", "finish_reason", "error")

    def __init__(self, record: Mapping, path: Path, offset: int):
        for name in self.KEPT:
            value = record.get(name)
            setattr(self, name, sys.intern(value) if type(value) is str and name != "error" else value)
        self._path, self._offset = path, offset

    def record(self) -> dict:
        """The whole record, read back from the journal."""
        with open(self._path, "rb") as handle:
            handle.seek(self._offset)
            return json.loads(handle.readline())

    def __getitem__(self, key: str):
        return getattr(self, key) if key in self.KEPT else self.record()[key]

    def get(self, key: str, default=None):
        value = self[key] if key in self.KEPT else self.record().get(key, default)
        return default if value is None else value


@dataclass
class JournalTotals:
    """What every attempt in the journal spent: requests sent and tokens per (model, source), from which a price
    table gives the cost exactly."""

    attempts: int = 0
    records: int = 0
    tokens: dict = field(default_factory=dict)  # (model, source) -> [prompt, completion]

    def add(self, record: Mapping) -> None:
        usage = record.get("usage") or {}
        spent = self.tokens.setdefault((record.get("model"), record.get("source")), [0, 0])
        spent[0] += int(usage.get("prompt_tokens", 0))
        spent[1] += int(usage.get("completion_tokens", 0))
        self.attempts += int(record.get("attempts") or 0)
        self.records += 1

    def as_records(self) -> Iterator[dict]:
        """One record-shaped total per (model, source), for the cost helpers."""
        for (model, source), (prompt, completion) in self.tokens.items():
            yield {
                "model": model,
                "source": source,
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
            }


class Journal:
    """Append-only JSONL files under a folder; one file per process run, so concurrent writers never interleave.

    Each record is flushed to the operating system as it is appended: a killed process (even SIGKILL) loses
    nothing that was appended. ``fsync`` (which only matters if the machine itself crashes) runs at most once
    per ``fsync_interval`` seconds and on close; an fsync per record would cap a run at ~200 records/s.
    """

    def __init__(self, directory: str | os.PathLike, fsync_interval: float = 1.0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"journal-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl"
        self.fsync_interval = fsync_interval
        self._lock = threading.Lock()
        self._file = None
        self._last_fsync = 0.0

    def append(self, record: dict) -> int:
        """Write ``record``; returns the byte offset of its line in ``self.path``."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if self._file is None:
                self._file = open(self.path, "ab")
            offset = self._file.tell()
            self._file.write(line)
            self._file.flush()
            now = time.monotonic()
            if now - self._last_fsync >= self.fsync_interval:
                os.fsync(self._file.fileno())
                self._last_fsync = now
        return offset

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None

    def scan(self) -> Iterator[tuple[dict, Path, int]]:
        """Every record of every file with its file and byte offset, oldest file first; a line cut short by a kill
        is skipped."""
        for path in sorted(self.directory.glob("journal-*.jsonl")):
            offset = 0
            with open(path, "rb") as handle:
                for line in handle:
                    try:
                        yield json.loads(line), path, offset
                    except json.JSONDecodeError:
                        pass  # the last line of a killed run
                    offset += len(line)

    def records(self) -> Iterator[dict]:
        """Every record of every file, oldest file first."""
        return (record for record, _, _ in self.scan())

    def latest(self) -> dict[str, JournalEntry]:
        """request_id -> the record that counts (the first ``ok`` one, else the last failure), without its answer."""
        latest: dict[str, JournalEntry] = {}
        for record, path, offset in self.scan():
            _keep(latest, record, path, offset)
        return latest

    def done_ids(self) -> set[str]:
        return {rid for rid, rec in self.latest().items() if rec["status"] == STATUS_OK}

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _keep(latest: dict[str, JournalEntry], record: dict, path: Path, offset: int) -> None:
    previous = latest.get(record["request_id"])
    if previous is None or previous.status != STATUS_OK:
        latest[sys.intern(record["request_id"])] = JournalEntry(record, path, offset)  # one copy of the id: the plan's


class ObservedJournal(Journal):
    """A journal read once, when opened, and kept current from then on: ``index`` (the record that counts per request
    id, without answers) and ``totals`` follow every record written, and listeners (budget, progress bar) are told
    of each. A run asks these instead of reading its files again."""

    def __init__(self, directory, listeners: list[Callable[[dict], None]] | None = None):
        super().__init__(directory)
        self.listeners = listeners or []
        self.index: dict[str, JournalEntry] = {}
        self.totals = JournalTotals()
        for record, path, offset in self.scan():
            _keep(self.index, record, path, offset)
            self.totals.add(record)

    def append(self, record: dict) -> int:
        offset = super().append(record)
        _keep(self.index, record, self.path, offset)
        self.totals.add(record)
        for listener in self.listeners:
            listener(record)
        return offset

    def latest(self) -> dict[str, JournalEntry]:
        return self.index

    def done_ids(self) -> set[str]:
        return {rid for rid, entry in self.index.items() if entry.status == STATUS_OK}


class Backend(Protocol):
    """How requests get answered: online (AsyncOpenAI, concurrent) or through the OpenAI Batch API.

    ``run`` appends exactly one record per request it finished (ok or failed) to ``journal`` and returns when
    every request has a record or when it must stop (budget reached, batch still in progress); requests left
    without an ``ok`` record are simply planned again by the next run.
    """

    stopped_by_budget: bool  # run() stopped sending because the budget would be passed
    running: int  # batches left running when run() returned (always 0 online)

    async def check_endpoint(self) -> None:
        """Fail fast, with one clear error, when the endpoint cannot be used at all."""

    async def run(self, requests: list[Request], journal: Journal) -> None: ...
