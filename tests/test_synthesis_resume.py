"""A run killed with SIGKILL mid-way and restarted re-sends nothing journaled and ends with the same dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from e5_mistral.llm.journal import Journal
from e5_mistral.synthesis.runner import SynthesisRun, generate
from tests.fake_openai import prompt_hash
from tests.helpers.synthesis_fakes import _family, prompt_of, responder, run_args


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


def test_a_new_examples_per_task_reuses_every_answer_that_still_belongs_and_reports_the_rest(fake_openai, tmp_path):
    calls = Counter()

    def brainstorm_per_call(body: dict) -> str:
        # every brainstorm call of a family has the same prompt: number the lists so that a second call adds tasks
        if _family(prompt_of(body)).endswith(":brainstorm"):
            calls["brainstorm"] += 1
            return json.dumps([f"Retrieve documents of kind {calls['brainstorm']}-{i}." for i in range(20)])
        return responder(body)

    fake_openai.responder = brainstorm_per_call
    prices = {"*": {"input": 1.0, "output": 2.0}}
    settings = dict(num_examples=60, families=["short_long"], price_table=prices, concurrency=1)
    first = generate(run_args(fake_openai, tmp_path, examples_per_task=3.0, **settings)).report
    assert first["complete"] and first["brainstorm"]["tasks_unique"] == 20 and first["orphaned"]["answers"] == 0
    old_examples = {
        rid: rec for rid, rec in Journal(tmp_path / "journal").latest().items() if rec["kind"] == "example"
    }
    fake_openai.reset_stats()

    # 1.5 examples per task: a second brainstorm call, 40 tasks, and every row's task moves
    second_args = run_args(fake_openai, tmp_path, examples_per_task=1.5, **settings)
    second = generate(second_args).report
    plan = SynthesisRun(second_args).plan(Journal(tmp_path / "journal").latest())
    new_ids = {r.request_id for fp in plan for r, _ in fp.examples}
    kept = set(old_examples) & new_ids
    assert second["complete"] and second["brainstorm"]["tasks_unique"] == 40
    assert len(kept) >= 20  # at least each old task's first example (use 0) is still planned
    # server-side: one new brainstorm call and only the examples that were not answered yet
    assert fake_openai.stats.requests == 1 + 60 - len(kept)
    orphans = [rec for rid, rec in old_examples.items() if rid not in new_ids]
    assert second["orphaned"]["answers"] == second["orphaned"]["examples"] == 60 - len(kept) > 0
    prompt = sum(r["usage"]["prompt_tokens"] for r in orphans)
    completion = sum(r["usage"]["completion_tokens"] for r in orphans)
    assert (second["orphaned"]["prompt_tokens"], second["orphaned"]["completion_tokens"]) == (prompt, completion)
    assert second["orphaned"]["estimated_cost_usd"] == pytest.approx((prompt * 1.0 + completion * 2.0) / 1e6, abs=1e-6)
    card = (tmp_path / "dataset" / "README.md").read_text()
    assert f"include {60 - len(kept)} answers" in card


def _run_until(argv, output: Path, lines: int) -> None:
    """Start ``argv`` and SIGKILL it once the journal holds ``lines`` records."""
    process = subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (output / "journal").is_dir() and _journal_lines(output) >= lines:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@pytest.mark.slow
def test_faults_two_sigkills_and_a_new_examples_per_task_never_pay_twice(fake_openai, tmp_path):
    from tests.fake_openai import FaultRates

    calls = Counter()

    def numbered_brainstorms(body: dict) -> str:
        if _family(prompt_of(body)).endswith(":brainstorm"):  # a later call adds tasks
            calls["brainstorm"] += 1
            return json.dumps([f"Retrieve documents of kind {calls['brainstorm']}-{i}." for i in range(20)])
        return responder(body)

    fake_openai.responder = numbered_brainstorms
    fake_openai.latency = 0.02
    fake_openai.faults = FaultRates(
        rate_429=0.2, rate_500=0.1, rate_timeout=0.05, rate_malformed=0.1, retry_after=0.05, slow_seconds=1.0
    )
    output = tmp_path / "out"
    base = _cli(fake_openai, output)
    base[base.index("--timeout") + 1] = "0.5"
    prices = ["--price-table", '{"*": {"input": 1.0, "output": 2.0}}', "--max-attempts", "12"]
    _run_until([*base, *prices, "--examples-per-task", "3"], output, 40)
    _run_until([*base, *prices, "--examples-per-task", "3"], output, 100)
    finished = subprocess.run(
        [*base, *prices, "--examples-per-task", "2"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr
    report = json.loads((output / "report.json").read_text())
    assert report["complete"] and report["planned"] == 160
    assert report["planned"] == (
        report["accepted"] + sum(report["rejected"].values()) + report["duplicates_removed"] + report["failed"]
    )
    assert report["rejected"].get("invalid_json", 0) > 0  # the malformed answers were collected as rejects

    # never paid twice: no request has two answers in the journal, and the server delivered no more answers
    # than the journal holds, but for those in flight when each of the two kills came (at most 4 each)
    records = list(Journal(output / "journal").records())
    ok = Counter(r["request_id"] for r in records if r["status"] == "ok")
    assert max(ok.values()) == 1
    delivered = sum(fake_openai.stats.ok_by_prompt.values())
    assert len(ok) <= delivered <= len(ok) + 2 * 4
    assert fake_openai.stats.outcomes["429"] > 0 and fake_openai.stats.outcomes["timeout"] > 0

    # the answers of the first plan that the second one no longer uses are reported with their cost
    latest = Journal(output / "journal").latest()
    plan = SynthesisRun(
        run_args(fake_openai, output, num_examples=160, examples_per_task=2.0, price_table=prices[1])
    ).plan(latest)
    planned = {r.request_id for fp in plan for r in fp.brainstorm_history} | {
        r.request_id for fp in plan for r, _ in fp.examples
    }
    orphans = [r for r in records if r["request_id"] not in planned and r["kind"] != "probe"]
    orphan_ids = {r["request_id"] for r in orphans if r["request_id"] in ok}
    assert report["orphaned"]["answers"] == len(orphan_ids) > 0
    tokens = sum(
        r["usage"]["prompt_tokens"] + 2 * r["usage"]["completion_tokens"]
        for r in orphans
        if r["request_id"] in orphan_ids
    )
    assert report["orphaned"]["estimated_cost_usd"] == pytest.approx(tokens / 1e6, abs=1e-6)
