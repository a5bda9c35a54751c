"""A run killed with SIGKILL mid-way and restarted re-sends nothing journaled and ends with the same dataset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from e5_mistral.synthesis.journal import Journal
from e5_mistral.synthesis.runner import SynthesisRun, generate
from tests.fake_openai import prompt_hash
from tests.test_synthesis_fakes import responder, run_args


REPO = Path(__file__).resolve().parents[1]


def _cli(server, output) -> list[str]:
    return [
        sys.executable,
        "-m",
        "e5_mistral.cli",
        "generate",
        "--model",
        "fake-llm",
        "--base-url",
        server.base_url,
        "--output",
        str(output),
        "--num-examples",
        "160",
        "--seed",
        "3",
        "--languages",
        "English",
        "German",
        "Uzbek",
        "--concurrency",
        "4",
        "--timeout",
        "5",
        "--retry-initial-wait",
        "0.01",
        "--no-progress",
        "--response-format",
        "none",
    ]  # as run_args: the plan's requests only


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _journal_lines(output: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in (output / "journal").glob("journal-*.jsonl"))


def _rows(output: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = pq.read_table(output / "dataset" / "all" / "train-00000-of-00001.parquet").to_pylist()
    return sorted(rows, key=lambda r: r["request_id"])


@pytest.mark.slow
def test_sigkill_then_resume_sends_nothing_twice_and_matches_an_uninterrupted_run(fake_openai, tmp_path):
    fake_openai.responder = responder
    fake_openai.latency = 0.03
    args = run_args(fake_openai, tmp_path / "reference", num_examples=160, concurrency=4, timeout=5.0)
    reference = generate(args).report
    fake_openai.reset_stats()

    output = tmp_path / "killed"
    process = subprocess.Popen(
        _cli(fake_openai, output), cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if (output / "journal").is_dir() and _journal_lines(output) >= 40:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    process.stdout.close(), process.stderr.close()

    latest = Journal(output / "journal").latest()
    done = {rid for rid, rec in latest.items() if rec["status"] == "ok"}
    assert 40 <= len(done) < reference["planned"]
    plan = SynthesisRun(run_args(fake_openai, output, num_examples=160)).plan(latest)
    requests = [r for fp in plan for r in fp.brainstorms] + [r for fp in plan for r, _ in fp.examples]
    assert done <= {r.request_id for r in requests}

    fake_openai.reset_stats()
    finished = subprocess.run(
        _cli(fake_openai, output), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr

    # Every request the killed run journaled as answered was never sent again: per prompt, the second run
    # served at most the planned requests that were not journaled yet.
    latest = Journal(output / "journal").latest()
    plan = SynthesisRun(run_args(fake_openai, output, num_examples=160)).plan(latest)
    requests = [r for fp in plan for r in fp.brainstorms] + [r for fp in plan for r, _ in fp.examples]
    planned_by_prompt = Counter(prompt_hash({"messages": list(r.messages)}) for r in requests)
    done_by_prompt = Counter(prompt_hash({"messages": list(r.messages)}) for r in requests if r.request_id in done)
    for prompt, served in fake_openai.stats.ok_by_prompt.items():
        assert served <= planned_by_prompt[prompt] - done_by_prompt[prompt], prompt
    assert fake_openai.stats.requests == len(requests) - len(done)

    assert _rows(output) == _rows(tmp_path / "reference")
