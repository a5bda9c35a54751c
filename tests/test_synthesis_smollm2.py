"""Against a real local LLM: SmolLM2-135M-Instruct behind `transformers serve`, started and stopped by PID."""

from __future__ import annotations

import json

import pytest

from e5_mistral.local_server import sampling_body, transformers_serve
from e5_mistral.synthesis.cli import main


KNOWN_REASONS = (
    "truncated",
    "empty_response",
    "invalid_json",
    "not_an_object",
    "missing_key:",
    "empty_value:",
    "nested_value:",
    "not_a_string:",
    "extra_key:",
    "query_equals_positive",
    "label_equals_misleading",
    "sentences_not_distinct",
    "brainstorm_not_a_list_of_strings",
    "no_valid_tasks",
)


@pytest.fixture
def smollm2_server(smollm2_dir, tmp_path, monkeypatch):
    """`transformers serve` on 127.0.0.1, stopped by PID (SIGTERM, then SIGKILL) when the test ends."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with transformers_serve(smollm2_dir, startup_timeout=120, log_path=tmp_path / "serve.log") as base_url:
        yield base_url


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smollm2_produces_accepted_rows_and_explained_rejects(smollm2_server, smollm2_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    # Greedy decoding (temperature 0) keeps this 135M model's JSON usable.
    code = main(
        [
            "--base-url",
            smollm2_server,
            "--model",
            str(smollm2_dir),
            "--output",
            str(tmp_path / "out"),
            "--families",
            "sts",
            "--num-examples",
            "2",
            "--languages",
            "English",
            "--max-tokens",
            "96",
            "--concurrency",
            "1",
            "--timeout",
            "300",
            "--max-attempts",
            "1",
            "--no-progress",
            "--extra-body",
            sampling_body(96, temperature=0),
        ],
        prog="e5-mistral generate",
    )
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (
        report["planned"]
        == report["accepted"] + sum(report["rejected"].values()) + report["duplicates_removed"] + report["failed"]
    )
    assert report["accepted"] >= 1, report
    assert report["completion_tokens"] > 0
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    for reject in rejects:
        assert (
            reject["reason"].startswith(KNOWN_REASONS)
            and reject["raw"] is not None
            or reject["reason"] == "empty_response"
        )
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "out" / "dataset" / "sts" / "train-00000-of-00001.parquet").to_pylist()
    assert len(rows) == report["accepted"]
    assert all(r["S1"] and r["S2"] and r["S3"] and r["task"] == "Retrieve semantically similar text." for r in rows)
