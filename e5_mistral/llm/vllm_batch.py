"""``--backend vllm-batch``: requests answered offline by ``vllm run-batch``, through files.

A run writes the requests it still needs (no ``ok`` record, in no file still waiting for its results) to
``OUTPUT/vllm-batch/input-RRR-PPPP.jsonl``, in the OpenAI batch format that ``vllm run-batch`` reads, logs the
command that answers each file, and returns: those files count as running. The next run journals every results file
it finds beside its input (``input-RRR-PPPP.out.jsonl``) once it answers every request of the input (a file vLLM is
still writing waits), through the journal, resume and accounting every back end uses, marks it imported, and writes
what is still unanswered (failed lines) to new files. Lines of requests the input never held are skipped.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import Iterable

from .batch import MAX_BYTES, MAX_LINES, journal_results, read_results, write_batch_files
from .cost import Budget, worst_case_cost
from .journal import Journal, Request


logger = logging.getLogger(__name__)

SOURCE = "vllm-batch"  # the journal's source: priced as online tokens (the Batch API's discount is OpenAI's)
OUTPUT_SUFFIX = ".out.jsonl"
IMPORTED_SUFFIX = ".imported"


def output_of(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".jsonl") + OUTPUT_SUFFIX)


def _custom_ids(path: Path) -> set[str]:
    with open(path, encoding="utf-8") as handle:
        return {json.loads(line)["custom_id"] for line in handle if line.strip()}


def _complete(path: Path) -> bool:
    """Whether the results file beside input ``path`` answers every request of it (finished lines only)."""
    results = output_of(path)
    if not results.is_file():
        return False
    answered = set()
    for line in results.read_text(encoding="utf-8").split("\n"):
        try:
            answered.add(json.loads(line)["custom_id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a blank line, or the last one, still being written
    return _custom_ids(path) <= answered


def _model_of(path: Path) -> str:
    """The model a file's requests name (each file holds one model's)."""
    with open(path, encoding="utf-8") as handle:
        return json.loads(handle.readline())["body"]["model"]


class VllmBatchBackend:
    def __init__(
        self,
        output_dir: str | Path,
        budget: Budget | None = None,
        max_lines: int = MAX_LINES,
        max_bytes: int = MAX_BYTES,
    ):
        self.directory = Path(output_dir) / "vllm-batch"
        self.budget = budget
        self.max_lines, self.max_bytes = max_lines, max_bytes
        self.endpoint = "vllm run-batch"
        self.running = 0  # files written and not answered yet, holding requests of the last run()
        self.stopped_by_budget = False

    async def check_endpoint(self) -> None:
        """Nothing to reach: vLLM answers the files."""

    async def run(self, requests: Iterable[Request], journal: Journal) -> None:
        by_id = {request.request_id: request for request in requests}
        waiting = self._import(by_id, journal)
        done = journal.done_ids()
        todo = self._within_budget(
            [r for rid, r in by_id.items() if rid not in done and rid not in waiting],
            [by_id[rid] for rid in waiting if rid in by_id],
        )
        if todo:
            round_index = len({p.name.split("-")[1] for p in self._inputs()})
            write_batch_files(
                todo, self.directory, f"input-{round_index:03d}", max_lines=self.max_lines, max_bytes=self.max_bytes
            )
        unanswered = [p for p in self._inputs() if not _complete(p) and _custom_ids(p) & by_id.keys()]
        self.running = len(unanswered)
        for path in unanswered:
            command = ["vllm", "run-batch", "-i", str(path), "-o", str(output_of(path)), "--model", _model_of(path)]
            logger.warning("to answer: %s", shlex.join(command))
        if unanswered:
            logger.warning("then rerun the same command to import the answers")

    def _inputs(self) -> list[Path]:
        return sorted(p for p in self.directory.glob("input-*.jsonl") if not p.name.endswith(OUTPUT_SUFFIX))

    def _import(self, by_id: dict[str, Request], journal: Journal) -> set[str]:
        """Journal each results file not imported yet; return the ids of files still without results."""
        waiting: set[str] = set()
        for path in self._inputs():
            results, marker = output_of(path), output_of(path).with_suffix(IMPORTED_SUFFIX)
            if marker.is_file():
                continue
            if not _complete(path):  # no results yet, or vLLM is still writing them
                waiting |= _custom_ids(path)
                continue
            asked = _custom_ids(path)
            if not asked <= by_id.keys() | journal.done_ids():  # another stage's file: imported with its requests
                continue
            answers = read_results(results.read_text(encoding="utf-8"), str(results))
            answers = {rid: answer for rid, answer in answers.items() if rid in asked}  # lines it never asked for
            counts = journal_results(answers, by_id, journal, journal.done_ids(), source=SOURCE)
            marker.write_text(json.dumps(counts) + "\n", encoding="utf-8")
            logger.info("imported %s: %s", results, counts)
        return waiting

    def _within_budget(self, todo: list[Request], waiting: list[Request]) -> list[Request]:
        """The requests whose worst case fits beside what is spent and what the waiting files may still cost."""
        if self.budget is None or not self.budget.limited:
            return todo
        for request in waiting:
            self.budget.reserve(*worst_case_cost(request.body(), self.budget.prices))
        kept = []
        for request in todo:
            worst = worst_case_cost(request.body(), self.budget.prices)
            if not self.budget.fits(*worst):
                self.stopped_by_budget = True
                break
            self.budget.reserve(*worst)
            kept.append(request)
        return kept
