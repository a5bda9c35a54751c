"""A run reads its journal once, keeps ids and statuses rather than answers, renders prompts only to send them, and
streams rows to the dataset files: the same dataset as before, in bounded memory."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from e5_mistral.hub import writer as dataset_module
from e5_mistral.llm.journal import Journal, JournalEntry, ObservedJournal
from e5_mistral.synthesis import collect as collect_module
from e5_mistral.synthesis import plan as plan_module
from e5_mistral.synthesis.runner import generate
from tests.helpers.synthesis_fakes import responder, run_args


def _rows(output):
    return pq.read_table(output / "dataset" / "all" / dataset_module.DATA_FILE).to_pylist()


def test_a_resumed_run_reads_the_journal_once_and_renders_only_what_it_sends(fake_openai, tmp_path, monkeypatch):
    fake_openai.responder = responder
    output = tmp_path / "out"
    generate(run_args(fake_openai, output, num_examples=24))
    examples_before = _example_records(output)
    scans, rendered = [], []
    scan, render = Journal.scan, plan_module.render
    monkeypatch.setattr(Journal, "scan", lambda self: scans.append(1) or scan(self))
    monkeypatch.setattr(
        plan_module, "render", lambda family, kind, values: rendered.append(kind) or render(family, kind, values)
    )

    grown = generate(run_args(fake_openai, output, num_examples=36))  # more examples on the same journal

    assert len(scans) == 1  # the session's one read; every later question is asked of its index
    sent = _example_records(output) - examples_before
    assert sent > 0 and rendered.count("generate") == sent  # no prompt rendered for an example already answered
    assert grown.report["planned"] == 36 and grown.report["complete"]


def _example_records(output) -> int:
    return sum(r["kind"] == "example" for r in Journal(output / "journal").records())


def test_the_index_keeps_statuses_and_reads_answers_back_from_their_lines(fake_openai, tmp_path):
    fake_openai.responder = responder
    output = tmp_path / "out"
    generate(run_args(fake_openai, output, num_examples=12))
    records = {r["request_id"]: r for r in Journal(output / "journal").records() if r["status"] == "ok"}

    index = ObservedJournal(output / "journal").index
    assert records and set(records) <= set(index)
    for rid, record in records.items():
        entry = index[rid]
        assert isinstance(entry, JournalEntry) and not hasattr(entry, "content") and not hasattr(entry, "__dict__")
        assert entry["status"] == "ok" and entry["kind"] == record["kind"]
        assert entry["content"] == record["content"] and entry.record() == record


def test_rows_streamed_in_small_batches_make_the_same_dataset(fake_openai, tmp_path, monkeypatch):
    fake_openai.responder = responder
    whole = tmp_path / "whole"
    generate(run_args(fake_openai, whole, num_examples=30))

    monkeypatch.setattr(dataset_module, "ROWS_PER_BATCH", 2)
    streamed = tmp_path / "streamed"
    generate(run_args(fake_openai, streamed, num_examples=30))

    assert _rows(streamed) == _rows(whole) and len(_rows(whole)) > 4
    assert pq.ParquetFile(streamed / "dataset" / "all" / dataset_module.DATA_FILE).num_row_groups > 2
    for name in ("report.json", "diversity.json", "rejected.jsonl"):
        assert (streamed / name).read_text() == (whole / name).read_text().replace(str(whole), str(streamed)), name
    assert (streamed / "dataset" / "README.md").read_text() == (whole / "dataset" / "README.md").read_text().replace(
        str(whole), str(streamed)
    )


def test_a_failure_while_collecting_leaves_the_previous_dataset(fake_openai, tmp_path, monkeypatch):
    fake_openai.responder = responder
    output = tmp_path / "out"
    generate(run_args(fake_openai, output, num_examples=12))
    before = _rows(output)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(collect_module, "parse_example", broken)
    try:
        generate(run_args(fake_openai, output, num_examples=12))
    except RuntimeError as err:
        assert "disk full" in str(err)
    assert _rows(output) == before  # the old dataset stays whole until a new one is complete
    assert not (output / "dataset.tmp").exists()
    assert json.loads((output / "report.json").read_text())["accepted"] == len(before)
