"""Against a real local LLM: SmolLM2-135M-Instruct behind `transformers serve`, started and stopped by PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from e5_mistral.synthesis.cli import main

KNOWN_REASONS = ("truncated", "empty_response", "invalid_json", "not_an_object", "missing_key:", "empty_value:",
                 "nested_value:", "not_a_string:", "extra_key:", "query_equals_positive", "label_equals_misleading",
                 "sentences_not_distinct", "brainstorm_not_a_list_of_strings", "no_valid_tasks")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def smollm2_server(smollm2_dir, tmp_path):
    port = _free_port()
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    (tmp_path / "hf" / "hub").mkdir(parents=True)  # GET /v1/models needs the hub cache folder
    serve = Path(sys.executable).with_name("transformers")
    log = open(tmp_path / "serve.log", "wb")
    process = subprocess.Popen([str(serve), "serve", str(smollm2_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "transformers serve did not start"
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
        log.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smollm2_produces_accepted_rows_and_explained_rejects(smollm2_server, smollm2_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    # transformers serve samples only when sent a generation_config; greedy keeps this 135M model's JSON usable.
    generation_config = json.dumps({"do_sample": False, "max_new_tokens": 96})
    code = main(["--base-url", smollm2_server, "--model", str(smollm2_dir), "--output", str(tmp_path / "out"),
                 "--families", "sts", "--num-examples", "2", "--languages", "English", "--max-tokens", "96",
                 "--concurrency", "1", "--timeout", "300", "--max-attempts", "1", "--no-progress",
                 "--extra-body", json.dumps({"generation_config": generation_config})], prog="e5-mistral generate")
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["planned"] == report["accepted"] + sum(report["rejected"].values()) + report["duplicates_removed"] + report["failed"]
    assert report["accepted"] >= 1, report
    assert report["completion_tokens"] > 0
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    for reject in rejects:
        assert reject["reason"].startswith(KNOWN_REASONS) and reject["raw"] is not None or reject["reason"] == "empty_response"
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "out" / "dataset" / "sts" / "train-00000-of-00001.parquet").to_pylist()
    assert len(rows) == report["accepted"]
    assert all(r["S1"] and r["S2"] and r["S3"] and r["task"] == "Retrieve semantically similar text." for r in rows)
