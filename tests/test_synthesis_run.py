"""Runs against the fault-injecting fake server: report invariant, expected rejects, resume, budget, errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from e5_mistral.llm.cost import worst_case_tokens
from e5_mistral.llm.journal import Journal
from e5_mistral.synthesis.runner import SynthesisRun, generate
from e5_mistral.text import match_key
from tests.fake_openai import FaultRates
from tests.helpers.synthesis_fakes import intended_outcome, responder, run_args


MALFORMED_PREFIX = "Sure! Here is the JSON you asked for:"


def _invariant(report):
    assert (
        report["planned"]
        == report["accepted"] + sum(report["rejected"].values()) + report["duplicates_removed"] + report["failed"]
    )
    for family, stats in report["per_family"].items():
        assert (
            stats["planned"] == stats["accepted"] + stats["rejected"] + stats["duplicates_removed"] + stats["failed"]
        ), family


def _expected_rejects(args, output: Path) -> Counter:
    latest = Journal(output / "journal").latest()
    expected = Counter()
    for fp in SynthesisRun(args).plan(latest):
        for request, _ in fp.examples:
            content = latest[request.request_id]["content"]
            outcome = (
                "invalid_json"
                if content.startswith(MALFORMED_PREFIX)
                else intended_outcome(request.messages[0]["content"])
            )
            if outcome not in ("ok", "duplicate"):
                expected[outcome] += 1
    return expected


def _dataset_rows(output: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(output / "dataset" / "all" / "train-00000-of-00001.parquet").to_pylist()


def test_faulty_endpoint_run_keeps_invariant_and_resumes_without_resending(fake_openai, tmp_path):
    fake_openai.responder = responder
    fake_openai.faults = FaultRates(
        rate_429=0.2, retry_after=0.05, rate_500=0.1, rate_timeout=0.05, rate_malformed=0.1, slow_seconds=1.5
    )
    args = run_args(fake_openai, tmp_path / "out")
    report = generate(args).report

    assert all(fake_openai.stats.outcomes[kind] > 0 for kind in ("429", "500", "timeout", "malformed", "ok"))
    _invariant(report)
    assert report["failed"] == 0 and report["complete"]
    assert report["requests_sent"] == fake_openai.stats.requests  # every attempt, retries and timeouts included
    assert report["rejected"] == _expected_rejects(args, tmp_path / "out")
    assert report["rejected"]["invalid_json"] > 0
    assert report["duplicates_removed"] > 0
    assert report["prompt_tokens"] > 0 and report["completion_tokens"] > 0
    assert report["brainstorm"]["tasks_unique"] == 80  # the fake gives the same 20 tasks per family

    rows = _dataset_rows(tmp_path / "out")
    assert len(rows) == report["accepted"]
    for family in report["per_family"]:
        key = {"short_long": "user_query", "long_short": "input_text", "sts": "S1", "bitext": "S1"}.get(
            family, "input"
        )
        keys = [match_key(r[key]) for r in rows if r["family"] == family]
        assert len(keys) == len(set(keys)), family
    assert sum(r["user_query"] == "What is the weather in Paris" for r in rows) == 1
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert Counter(r["reason"] for r in rejects if r["kind"] == "example") == Counter(report["rejected"])
    assert all(r["raw"] for r in rejects)

    # Rerun: nothing is requested again and the outputs are the same.
    fake_openai.reset_stats()
    again = generate(args).report
    assert fake_openai.stats.requests == 0
    assert {k: v for k, v in again.items()} == report
    assert _dataset_rows(tmp_path / "out") == rows


def test_budget_stops_cleanly_and_a_rerun_finishes(fake_openai, tmp_path):
    fake_openai.responder = responder
    args = run_args(
        fake_openai,
        tmp_path / "out",
        num_examples=60,
        max_total_tokens=8000,
        max_tokens=300,
        concurrency=4,
        price_table='{"fake-llm": {"input": 1.0, "output": 2.0}}',
    )
    first = generate(args).report
    _invariant(first)
    assert first["budget_stopped"] and not first["complete"]
    assert first["failed_reasons"].get("budget", 0) > 0 or first["failed_reasons"].get("brainstorm_incomplete", 0) > 0
    spent = first["prompt_tokens"] + first["completion_tokens"]
    # every request reserved its worst case before it went out, so the limit is never passed, whatever the
    # concurrency; the run stopped when the next request's worst case no longer fitted with none in flight
    plan = SynthesisRun(args).plan(Journal(tmp_path / "out" / "journal").latest())
    requests = [r for fp in plan for r in fp.brainstorms] + [r for fp in plan for r, _ in fp.examples]
    worst = max(sum(worst_case_tokens(r.body())) for r in requests)
    assert 8000 - worst < spent <= 8000
    assert first["estimated_cost_usd"] == pytest.approx(
        (first["prompt_tokens"] + 2 * first["completion_tokens"]) / 1e6
    )

    args.max_total_tokens = None
    final = generate(args).report
    _invariant(final)
    assert final["complete"] and final["failed"] == 0
    planned_requests = final["brainstorm"]["planned"] + final["planned"]
    assert fake_openai.stats.outcomes["ok"] == planned_requests  # each request answered exactly once over both runs
    assert fake_openai.stats.requests == final["requests_sent"]


def test_max_cost_needs_a_price(tmp_path):
    from e5_mistral.synthesis.config import SynthesisArguments

    with pytest.raises(ValueError, match="--max-cost needs a price"):
        SynthesisRun(SynthesisArguments(model="m", output=str(tmp_path), max_cost=1.0))


def test_exhausted_retries_are_failed_and_retried_next_run(fake_openai, tmp_path):
    fake_openai.responder = responder
    args = run_args(fake_openai, tmp_path / "out", num_examples=4, families=["sts"], max_attempts=2, concurrency=1)
    fake_openai.force("500", 2)  # the first request fails twice: its attempts are exhausted
    report = generate(args).report
    _invariant(report)
    assert report["failed"] == 1 and report["failed_reasons"] == {"InternalServerError": 1}
    failed = [r for r in Journal(tmp_path / "out" / "journal").records() if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["attempts"] == 2
    fake_openai.reset_stats()
    report = generate(args).report
    assert report["failed"] == 0 and fake_openai.stats.requests == 1  # only the failed one is sent again


def test_retry_after_is_honoured(fake_openai, tmp_path):
    import time

    fake_openai.responder = responder
    fake_openai.faults = FaultRates(retry_after=0.6)
    fake_openai.force("429", 1)
    args = run_args(
        fake_openai, tmp_path / "out", num_examples=1, families=["sts"], retry_initial_wait=0.0, retry_max_wait=5.0
    )
    start = time.monotonic()
    report = generate(args).report
    assert time.monotonic() - start >= 0.6
    assert report["accepted"] == 1 and report["requests_sent"] == 2


def test_truncated_answers_are_rejected(fake_openai, tmp_path):
    fake_openai.responder = responder
    fake_openai.faults = FaultRates(rate_truncated=1.0)
    report = generate(run_args(fake_openai, tmp_path / "out", num_examples=3, families=["sts"])).report
    assert report["rejected"] == {"truncated": 3} and report["accepted"] == 0


def test_backend_batch_is_wired_to_the_batch_backend(fake_openai, tmp_path, monkeypatch):
    from e5_mistral.llm import batch
    from e5_mistral.llm.journal import make_record

    created = {}

    class FakeBatchBackend:  # answers like the Batch API would, through the same journal
        def __init__(self, client, output_dir, completion_window="24h", poll_interval=30.0, wait=True, budget=None):
            created.update(output_dir=output_dir, poll_interval=poll_interval, wait=wait, budget=budget)
            self.running, self.stopped_by_budget = 0, False  # the Backend interface

        async def check_endpoint(self):
            pass

        async def run(self, requests, journal):
            for request in requests:
                body = {"messages": list(request.messages)}
                journal.append(
                    make_record(
                        request,
                        "ok",
                        content=responder(body),
                        finish_reason="stop",
                        usage={"prompt_tokens": 100, "completion_tokens": 50},
                        source="batch",
                    )
                )

    monkeypatch.setattr(batch, "BatchBackend", FakeBatchBackend)
    args = run_args(
        fake_openai,
        tmp_path / "out",
        num_examples=6,
        families=["sts"],
        backend="batch",
        batch_poll_interval=5.0,
        price_table='{"*": {"input": 1.0, "output": 1.0}}',
    )
    report = generate(args).report
    budget = created.pop("budget")  # the run's budget: batch files are held to it before submission
    assert created == {"output_dir": tmp_path / "out", "poll_interval": 5.0, "wait": True}
    assert budget.prices == {"*": {"input": 1.0, "output": 1.0}}
    assert report["accepted"] + report["duplicates_removed"] + sum(report["rejected"].values()) == 6
    assert report["estimated_cost_usd"] == pytest.approx(6 * 150 / 1e6 * 0.5)  # the Batch API's 50% discount
    assert fake_openai.stats.requests == 0


def test_minhash_task_dedup_is_counted(fake_openai, tmp_path):
    fake_openai.responder = responder
    args = run_args(
        fake_openai,
        tmp_path / "out",
        num_examples=30,
        families=["short_long"],
        dedup_tasks="minhash",
        dedup_threshold=0.3,
    )
    report = generate(args).report
    removed = report["brainstorm"]["tasks_removed_near_duplicate"]
    assert removed > 0 and report["brainstorm"]["tasks_unique"] == 20 - removed
    _invariant(report)


@pytest.mark.parametrize("temperature, reasks, expected_calls", [(1.0, None, 4), (0.0, None, 1), (0.0, 2, 3)])
def test_unusable_task_lists_are_asked_again_unless_decoding_is_greedy(
    fake_openai, tmp_path, temperature, reasks, expected_calls
):
    # A greedy endpoint answers a re-ask word for word, so by default it is asked once only.
    fake_openai.responder = lambda body: "- not a list of strings"
    args = run_args(
        fake_openai,
        tmp_path / "out",
        num_examples=2,
        families=["short_long"],
        temperature=temperature,
        brainstorm_reasks=reasks,
    )
    report = generate(args).report
    assert fake_openai.stats.requests == expected_calls
    assert report["accepted"] == 0 and report["failed"] == 0
    assert report["rejected"] == {"no_valid_tasks": 2}
