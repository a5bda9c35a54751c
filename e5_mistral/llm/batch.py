"""The batch backend: the same request plan, answered through the OpenAI Batch API (or ``vllm run-batch``).

Requests become JSONL batch files under ``OUTPUT/batch`` (``{"custom_id": request_id, "method": "POST",
"url": "/v1/chat/completions", "body": request.body()}`` per line), split at the API's limits of 50,000 lines
and 200 MB per file. ``state.json`` beside them records, for every file, its upload id, batch id, status and the
custom_ids it holds, and is rewritten after every step, so a re-run resumes polling instead of submitting twice.
Finished batches are joined on ``custom_id`` (the output order is not guaranteed) and journaled one record per
request; failed, expired and cancelled lines are journaled as failures, and the next run writes a new file with
only the requests that still lack an ``ok`` record. The API key never reaches these files.

The same input files run locally with ``vllm run-batch -i FILE -o RESULTS --model M``; :func:`import_results`
journals such a results file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import E5MistralError, MissingFileError
from .cost import Budget, worst_case_cost
from .journal import STATUS_FAILED, STATUS_OK, Journal, Request, make_record


logger = logging.getLogger(__name__)
# Batches that cannot stand for a submission: a rerun creates a new one instead of adopting them.
ADOPTABLE_NOT = ("failed", "expired", "cancelled", "cancelling")

MAX_LINES = 50_000  # requests per batch file (OpenAI limit)
MAX_BYTES = 200 * 1000 * 1000  # bytes per batch file: "200 MB", counted in decimal to stay under either reading
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
STATE_VERSION = 1
SOURCE = "batch"


def batch_line(request: Request, url: str = "/v1/chat/completions") -> bytes:
    """One line of a batch input file, newline included."""
    line = {"custom_id": request.request_id, "method": "POST", "url": url, "body": request.body()}
    return (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")


def split_batch_lines(
    requests: Iterable[Request],
    url: str = "/v1/chat/completions",
    max_lines: int = MAX_LINES,
    max_bytes: int = MAX_BYTES,
) -> list[list[tuple[str, bytes]]]:
    """Group the requests' lines into chunks of at most ``max_lines`` lines and ``max_bytes`` bytes, each of one
    model (a batch file serves one model), in order within a model, the models in the order they first come."""
    if max_lines < 1 or max_bytes < 1:
        raise E5MistralError(f"batch file limits must be positive (max_lines={max_lines}, max_bytes={max_bytes})")
    by_model: dict[str | None, list[Request]] = {}
    for request in requests:
        by_model.setdefault(request.params.get("model"), []).append(request)
    chunks: list[list[tuple[str, bytes]]] = []
    for group in by_model.values():
        chunks.extend(_chunks(group, url, max_lines, max_bytes))
    return chunks


def _chunks(requests: list[Request], url: str, max_lines: int, max_bytes: int) -> list[list[tuple[str, bytes]]]:
    chunks: list[list[tuple[str, bytes]]] = []
    current: list[tuple[str, bytes]] = []
    size = 0
    for request in requests:
        line = batch_line(request, url)
        if len(line) > max_bytes:
            raise E5MistralError(
                f"request {request.request_id} is {len(line)} bytes as a batch line, over the {max_bytes}-byte file limit"
            )
        if current and (len(current) >= max_lines or size + len(line) > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append((request.request_id, line))
        size += len(line)
    if current:
        chunks.append(current)
    return chunks


def write_batch_files(
    requests: Iterable[Request],
    directory: str | os.PathLike,
    prefix: str = "input",
    url: str = "/v1/chat/completions",
    max_lines: int = MAX_LINES,
    max_bytes: int = MAX_BYTES,
) -> list[tuple[Path, list[str]]]:
    """Write ``{prefix}-{part:04d}.jsonl`` files; return each path with the custom_ids it holds, in file order."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for part, chunk in enumerate(split_batch_lines(requests, url, max_lines, max_bytes)):
        path = directory / f"{prefix}-{part:04d}.jsonl"
        _atomic_write(path, b"".join(line for _, line in chunk))
        written.append((path, [custom_id for custom_id, _ in chunk]))
    return written


@dataclass
class BatchResult:
    """One line of a batch output or error file, reduced to what the journal keeps."""

    custom_id: str
    ok: bool
    content: str | None = None
    finish_reason: str | None = None
    usage: dict | None = None
    error: str | None = None


def parse_result_line(line: dict) -> BatchResult:
    """Read one output/error line as written by the OpenAI Batch API or ``vllm run-batch``."""
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str):
        raise E5MistralError("no custom_id")
    response = line.get("response") or {}
    error = line.get("error")
    status_code = response.get("status_code")
    body = response.get("body") or {}
    if isinstance(body, str):  # some servers send the body as a JSON string
        try:
            body = json.loads(body)
        except json.JSONDecodeError:
            body = {"error": {"message": body}}
    choices = body.get("choices") if isinstance(body, dict) else None
    if not error and status_code == 200 and choices:
        choice = choices[0]
        content = (choice.get("message") or {}).get("content")
        if content is None:
            return BatchResult(custom_id, False, error="the answer has no message content")
        usage = body.get("usage") or {}
        return BatchResult(
            custom_id,
            True,
            content=content,
            finish_reason=choice.get("finish_reason"),
            usage={
                "prompt_tokens": int(usage.get("prompt_tokens") or 0),
                "completion_tokens": int(usage.get("completion_tokens") or 0),
            },
        )
    return BatchResult(custom_id, False, error=_error_text(error, status_code, body))


def _error_text(error, status_code, body) -> str:
    parts = []
    if isinstance(error, dict):
        parts.append(": ".join(str(error[k]) for k in ("code", "message") if error.get(k)))
    elif error:
        parts.append(str(error))
    if status_code is not None and status_code != 200:
        message = ((body or {}).get("error") or {}).get("message") if isinstance(body, dict) else None
        parts.append(f"HTTP {status_code}" + (f": {message}" if message else ""))
    return "; ".join(p for p in parts if p) or "the batch line has neither an answer nor an error"


_CUSTOM_ID = re.compile(r'"custom_id"\s*:\s*"([^"\\]+)"')


def read_results(text: str, source: str, strict: bool = True) -> dict[str, BatchResult]:
    """Parse a whole output/error file; an ``ok`` line wins over a failure for the same custom_id.

    A last line without its newline (a run killed while writing) is skipped. Any other malformed line raises an
    error naming ``source`` and the line number when ``strict`` (a file the user imports); otherwise (a file
    downloaded from the Batch API) it becomes a failed result for the custom_id it names, so the rest of the batch
    is still collected and that one request is asked again.
    """
    results: dict[str, BatchResult] = {}
    lines = text.split("\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            result = parse_result_line(json.loads(raw))
        except (json.JSONDecodeError, ValueError, AttributeError, TypeError) as err:
            if number == len(lines):  # no trailing newline: cut short by a kill
                logger.warning("%s: skipping the unfinished last line %d", source, number)
                continue
            message = f"{source}: line {number} is not a batch result line ({err})"
            if strict:
                raise E5MistralError(message) from None
            logger.warning(message)
            named = _CUSTOM_ID.search(raw)
            result = BatchResult(named.group(1) if named else f"<line {number}>", False, error=message)
        previous = results.get(result.custom_id)
        if previous is None or not previous.ok:
            results[result.custom_id] = result
    return results


def journal_results(
    results: dict[str, BatchResult],
    requests: dict[str, Request],
    journal: Journal,
    done: set[str],
    source: str = SOURCE,
) -> dict:
    """Append one record per known, not yet ``ok`` request that has a result; return the counts."""
    counts = {"ok": 0, "failed": 0, "unknown": 0, "already_ok": 0}
    for custom_id, result in results.items():
        request = requests.get(custom_id)
        if request is None:
            counts["unknown"] += 1
            continue
        if custom_id in done:
            counts["already_ok"] += 1
            continue
        if result.ok:
            record = make_record(
                request,
                STATUS_OK,
                content=result.content,
                finish_reason=result.finish_reason,
                usage=result.usage,
                source=source,
            )
        else:
            record = make_record(request, STATUS_FAILED, error=result.error, source=source)
        journal.append(record)
        counts["ok" if result.ok else "failed"] += 1
    return counts


def import_results(path: str | os.PathLike, requests: list[Request], journal: Journal) -> dict:
    """Journal a results file written by ``vllm run-batch -o PATH`` (or downloaded from the Batch API).

    Lines are joined on ``custom_id``; lines for ids outside ``requests`` are counted as ``unknown`` and skipped.
    Requests with no line in the file get no record, so the next run plans them again. Returns the counts
    (``ok``, ``failed``, ``unknown``, ``already_ok``, ``missing``).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"batch results file {path} does not exist")
    results = read_results(path.read_text(encoding="utf-8"), str(path))
    by_id = {request.request_id: request for request in requests}
    counts = journal_results(results, by_id, journal, journal.done_ids())
    counts["missing"] = sum(1 for rid in by_id if rid not in results)
    return counts


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class BatchBackend:
    """Answer requests through the Batch API of ``client`` (an ``openai.AsyncOpenAI`` or ``AsyncAzureOpenAI``).

    Each :meth:`run` submits the requests that have neither an ``ok`` journal record nor a batch still running,
    then polls every unfinished batch every ``poll_interval`` seconds and journals the finished ones; with
    ``wait=False`` it polls once and returns, leaving batches running (``self.running`` counts them) for the
    next run to collect. ``max_lines``/``max_bytes`` are the per-file limits.
    """

    def __init__(
        self,
        client,
        output_dir: str | os.PathLike,
        completion_window: str = "24h",
        poll_interval: float = 30.0,
        wait: bool = True,
        max_lines: int = MAX_LINES,
        max_bytes: int = MAX_BYTES,
        budget: Budget | None = None,
    ):
        self.client = client
        self.budget = budget
        self.directory = Path(output_dir) / "batch"
        self.state_path = self.directory / "state.json"
        self.completion_window = completion_window
        self.poll_interval = poll_interval
        self.wait = wait
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.running = 0  # batches left unfinished by the last run()
        self.stopped_by_budget = False  # a batch file whose worst case would pass the budget was not submitted

    @property
    def endpoint(self) -> str:
        import openai

        # Azure's batch endpoint has no /v1 prefix; the line's url must equal the batch's endpoint.
        return "/chat/completions" if isinstance(self.client, openai.AsyncAzureOpenAI) else "/v1/chat/completions"

    # -- state ----------------------------------------------------------------------------------------
    def load_state(self) -> dict:
        if not self.state_path.is_file():
            return {"version": STATE_VERSION, "rounds": 0, "batches": []}
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise E5MistralError(f"{self.state_path} is not valid JSON ({err}); fix or remove it") from None
        if not isinstance(state, dict) or not isinstance(state.get("batches"), list):
            raise E5MistralError(f"{self.state_path} has no 'batches' list; fix or remove it")
        if state.get("version") != STATE_VERSION:
            raise E5MistralError(
                f"{self.state_path} has state version {state.get('version')!r}, this e5-mistral reads "
                f"{STATE_VERSION}: finish that run with the version that started it"
            )
        return state

    def save_state(self, state: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.state_path, (json.dumps(state, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))

    # -- run ------------------------------------------------------------------------------------------
    async def check_endpoint(self) -> None:
        from .online import check_reachable

        await check_reachable(self.client, str(self.client.base_url))

    async def run(self, requests: list[Request], journal: Journal) -> None:
        by_id = {request.request_id: request for request in requests}
        state = self.load_state()
        self._reuse_collected(state, by_id, journal)
        done = journal.done_ids()
        running_ids = {cid for entry in state["batches"] if not entry["collected"] for cid in entry["custom_ids"]}
        missing = [r for r in by_id.values() if r.request_id not in done and r.request_id not in running_ids]
        if missing:
            self._write_round(missing, state)
        await self._submit(state)
        # Only batches holding some of these requests are polled: a batch of another stage (say examples while
        # this call is for brainstorms) stays uncollected until a call that knows its requests comes.
        mine = [entry for entry in state["batches"] if any(cid in by_id for cid in entry["custom_ids"])]
        while True:
            await self._poll_once(state, mine, by_id, journal)
            self.running = sum(1 for entry in mine if entry["batch_id"] and not entry["collected"])
            if not self.running or not self.wait:
                break
            await asyncio.sleep(self.poll_interval)
        if self.running:
            logger.info("%d batch(es) still running; re-run to collect them", self.running)

    def _reuse_collected(self, state: dict, by_id: dict[str, Request], journal: Journal) -> None:
        """Journal answers already downloaded for requests that lack an ``ok`` record (their batch was
        collected by a call that did not know them), so they are never paid for twice."""
        done = journal.done_ids()
        for entry in state["batches"]:
            wanted = {cid: by_id[cid] for cid in entry["custom_ids"] if cid in by_id and cid not in done}
            if not entry["collected"] or not wanted or not entry.get("batch_id"):
                continue
            local = self.directory / f"output-{entry['batch_id']}.jsonl"
            if local.is_file():
                results = read_results(local.read_text(encoding="utf-8"), str(local), strict=False)
                ok = {cid: r for cid, r in results.items() if r.ok and cid in wanted}
                journal_results(ok, wanted, journal, done)

    def _write_round(self, requests: list[Request], state: dict) -> None:
        round_index = state["rounds"]
        files = write_batch_files(
            requests, self.directory, f"input-{round_index:03d}", self.endpoint, self.max_lines, self.max_bytes
        )
        for path, custom_ids in files:
            state["batches"].append(
                {
                    "file": path.name,
                    "round": round_index,
                    "custom_ids": custom_ids,
                    "file_id": None,
                    "batch_id": None,
                    "status": "written",
                    "collected": False,
                    "request_counts": None,
                    "output_file_id": None,
                    "error_file_id": None,
                }
            )
        state["rounds"] = round_index + 1
        self.save_state(state)
        logger.info("wrote %d request(s) to %d batch file(s) (round %d)", len(requests), len(files), round_index)

    async def _submit(self, state: dict) -> None:
        """Upload and create whatever a previous step left undone; the state is saved after each call. A file whose
        worst case does not fit the budget beside what is spent and what running batches may cost is not submitted
        (nor any after it): it waits, written, for a run with a larger budget."""
        limited = self.budget is not None and self.budget.limited
        # what the running batches may still cost, each file read once; a file submitted below joins it
        running = [self._worst_case(e) for e in state["batches"] if limited and e["batch_id"] and not e["collected"]]
        reserved = (sum(t for t, _ in running), sum(c for _, c in running))
        for entry in state["batches"]:
            if entry["collected"]:
                continue
            if entry["batch_id"] is None and limited:
                tokens, cost = self._worst_case(entry)
                if not self.budget.fits(reserved[0] + tokens, reserved[1] + cost):
                    self._refuse(entry, tokens, cost, reserved)
                    self.stopped_by_budget = True
                    break
                reserved = (reserved[0] + tokens, reserved[1] + cost)
            if entry["file_id"] is None:
                uploaded = await self.client.files.create(file=self.directory / entry["file"], purpose="batch")
                entry["file_id"], entry["status"] = uploaded.id, "uploaded"
                self.save_state(state)
            if entry["batch_id"] is None:
                digest = entry.setdefault("sha256", _file_sha256(self.directory / entry["file"]))
                # a run killed between create returning and the state being saved: adopt that batch, never pay twice
                known = {e["batch_id"] for e in state["batches"] if e["batch_id"]}
                batch = await self._created_before(digest, known)
                if batch is None:
                    batch = await self.client.batches.create(
                        input_file_id=entry["file_id"],
                        endpoint=self.endpoint,
                        completion_window=self.completion_window,
                        metadata={"e5_mistral_file": entry["file"], "e5_mistral_sha256": digest},
                    )
                else:
                    logger.warning("adopting batch %s, created for %s by an earlier run", batch.id, entry["file"])
                entry["batch_id"], entry["status"] = batch.id, batch.status
                self.save_state(state)

    def _worst_case(self, entry: dict) -> tuple[int, float]:
        """The most a batch file can cost: every line at its worst case, at the batch price."""
        tokens, cost = 0, 0.0
        with open(self.directory / entry["file"], encoding="utf-8") as handle:
            for line in handle:
                line_tokens, line_cost = worst_case_cost(json.loads(line)["body"], self.budget.prices, batch=True)
                tokens, cost = tokens + line_tokens, cost + line_cost
        return tokens, cost

    def _refuse(self, entry: dict, tokens: int, cost: float, reserved: tuple[int, float]) -> None:
        logger.error(
            "not submitting %s: its %d requests may cost up to %d tokens / $%.4f, which with %d tokens / $%.4f "
            "spent and %d tokens / $%.4f reserved by running batches would pass --max-total-tokens %s / --max-cost "
            "%s; it stays written for a rerun with a larger budget",
            entry["file"],
            len(entry["custom_ids"]),
            tokens,
            cost,
            self.budget.tokens,
            self.budget.cost,
            *reserved,
            self.budget.max_tokens,
            self.budget.max_cost,
        )

    async def _created_before(self, digest: str, known: set[str]):
        """A batch created for a file with these bytes, unknown to the state and not finished badly, or None (its
        metadata carries the sha256 of the file; every page of the account's batches is looked at)."""
        async for batch in self.client.batches.list(limit=100):
            if batch.id in known or batch.status in ADOPTABLE_NOT:
                continue
            if (batch.metadata or {}).get("e5_mistral_sha256") == digest:
                return batch
        return None

    async def _poll_once(self, state: dict, entries: list[dict], by_id: dict[str, Request], journal: Journal) -> None:
        for entry in entries:
            if entry["collected"] or not entry["batch_id"]:  # not submitted (over the budget)
                continue
            batch = await self.client.batches.retrieve(entry["batch_id"])
            entry["status"] = batch.status
            if batch.request_counts is not None:
                entry["request_counts"] = batch.request_counts.model_dump()
            if batch.status in TERMINAL_STATUSES:
                await self._collect(entry, batch, by_id, journal)
                entry["collected"] = True
            self.save_state(state)

    async def _collect(self, entry: dict, batch, by_id: dict[str, Request], journal: Journal) -> None:
        entry["output_file_id"], entry["error_file_id"] = batch.output_file_id, batch.error_file_id
        results: dict[str, BatchResult] = {}
        for kind, file_id in (("error", batch.error_file_id), ("output", batch.output_file_id)):  # ok lines win
            if not file_id:
                continue
            text = (await self.client.files.content(file_id)).text
            local = self.directory / f"{kind}-{batch.id}.jsonl"  # kept for debugging and re-import
            _atomic_write(local, text.encode("utf-8"))
            results.update(read_results(text, f"{kind} file {file_id} of batch {batch.id}", strict=False))
        wanted = {cid: by_id[cid] for cid in entry["custom_ids"] if cid in by_id}
        done = journal.done_ids()
        counts = journal_results({cid: r for cid, r in results.items() if cid in wanted}, wanted, journal, done)
        reason = _batch_errors(batch)
        unanswered = [cid for cid in wanted if cid not in results and cid not in done]
        for cid in unanswered:
            journal.append(
                make_record(
                    wanted[cid],
                    STATUS_FAILED,
                    source=SOURCE,
                    error=f"batch {batch.id} ended '{batch.status}' without an answer for this request{reason}",
                )
            )
        logger.info(
            "batch %s (%s): %d ok, %d failed, %d without an answer",
            batch.id,
            batch.status,
            counts["ok"],
            counts["failed"],
            len(unanswered),
        )


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _batch_errors(batch) -> str:
    errors = getattr(getattr(batch, "errors", None), "data", None) or []
    messages = [e.message for e in errors if getattr(e, "message", None)]
    return (" (" + "; ".join(messages) + ")") if messages else ""
