"""Budgets that bind (estimate, dry run, worst-case reservations online, batch files refused) and the server's own
rate-limit signals (retry-after-ms, HTTP-date Retry-After, x-should-retry, x-ratelimit-*), plus --rpm / --tpm."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time

import openai
import pytest

from e5_mistral.llm.batch import BatchBackend
from e5_mistral.llm.cost import Budget, worst_case_tokens
from e5_mistral.llm.journal import Journal, ObservedJournal, Request
from e5_mistral.llm.online import OnlineBackend, parse_duration
from e5_mistral.synthesis.cli import main as generate_main
from e5_mistral.synthesis.config import SynthesisArguments
from e5_mistral.synthesis.plan import family_counts, resolve_mix
from e5_mistral.synthesis.runner import SynthesisRun
from tests.fake_openai_batch import FakeBatchServer
from tests.helpers.synthesis_fakes import responder


PROMPT = "x" * 100  # the fake server counts 25 prompt tokens (4 characters a token)


def requests(n: int, max_tokens: int = 300) -> list[Request]:
    return [
        Request(
            f"r{i}", "example", "sts", ({"role": "user", "content": PROMPT},), {"model": "m", "max_tokens": max_tokens}
        )
        for i in range(n)
    ]


def run_backend(server, reqs, tmp_path, **kwargs) -> dict:
    async def go():
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=5.0)
        backend = OnlineBackend(client, **kwargs)
        budget = kwargs.get("budget")
        try:
            with ObservedJournal(tmp_path / "journal", [budget.add] if budget else []) as journal:
                await backend.run(reqs, journal)
        finally:
            await client.close()
        return backend

    backend = asyncio.run(go())
    return backend, Journal(tmp_path / "journal").latest()


def arrivals(server) -> list[float]:
    return [entry["time"] for entry in server.stats.log]


# -- budgets ---------------------------------------------------------------------------------------------------
def test_worst_case_is_prompt_bytes_plus_the_completion_cap():
    body = {"messages": [{"role": "user", "content": "é" * 10}], "max_completion_tokens": 7}
    assert worst_case_tokens(body) == (20 + 8, 7)  # two UTF-8 bytes per é, a chat template's 8 tokens per message


def test_the_online_budget_is_never_passed_whatever_the_concurrency(fake_openai, tmp_path):
    fake_openai.responder = lambda body: "y" * 1000  # 25 prompt + 250 completion tokens per answer
    budget = Budget(max_tokens=1000)
    backend, latest = run_backend(fake_openai, requests(20), tmp_path, concurrency=8, budget=budget)
    # each request reserves 100 + 8 + 300 = 408 tokens before it goes out: two fit at once; after both answers
    # (550 spent) a third fits; after it (825) a fourth's worst case would pass 1000 with none in flight
    assert fake_openai.stats.requests == 3 and len(latest) == 3 and backend.stopped_by_budget
    assert budget.tokens == 825 <= 1000 and budget.reserved_tokens == 0


def test_a_batch_file_whose_worst_case_passes_the_budget_is_not_submitted(tmp_path):
    reqs = requests(4, max_tokens=64)  # (100 + 8 + 64) x 4 = 688 tokens at most
    prices = {"m": {"input": 1000.0, "output": 1000.0}}  # $0.688 at most online, $0.344 through the Batch API

    def run(budget):
        async def go():
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0)
            backend = BatchBackend(client, tmp_path, poll_interval=0.01, budget=budget)
            try:
                with Journal(tmp_path / "journal") as journal:
                    for record in journal.records():
                        budget.add(record)
                    await backend.run(reqs, journal)
            finally:
                await client.close()
            return backend

        return asyncio.run(go())

    with FakeBatchServer(responder=lambda body: "ok") as server:
        refused = run(Budget(max_tokens=687, prices=prices))
        assert refused.stopped_by_budget and not server.batches  # nothing created, nothing paid
        [entry] = json.loads((tmp_path / "batch" / "state.json").read_text())["batches"]
        assert (entry["status"], entry["batch_id"]) == ("written", None)
        assert run(Budget(max_cost=0.34, prices=prices)).stopped_by_budget and not server.batches
        # at batch prices it fits $0.35: the written file is submitted as it is, and collected
        done = run(Budget(max_cost=0.35, prices=prices))
        assert not done.stopped_by_budget and len(server.batches) == 1
    assert {rec["status"] for rec in Journal(tmp_path / "journal").latest().values()} == {"ok"}


def test_the_estimate_is_printed_first_bounds_the_run_and_dry_run_sends_nothing(fake_openai, tmp_path, capsys):
    fake_openai.responder = responder
    argv = [
        "--model",
        "fake-llm",
        "--base-url",
        fake_openai.base_url,
        "--output",
        str(tmp_path / "out"),
        "--num-examples",
        "40",
        "--max-tokens",
        "200",
        "--price-table",
        '{"*": {"input": 1.0, "output": 2.0}}',
        "--response-format",
        "none",
        "--no-progress",
        "--retry-initial-wait",
        "0.01",
    ]
    assert generate_main([*argv, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert dry.startswith("estimate: ") and fake_openai.stats.requests == 0 and not (tmp_path / "out").exists()
    settings = SynthesisArguments(
        model="fake-llm",
        base_url=fake_openai.base_url,
        output=str(tmp_path / "out"),
        num_examples=40,
        max_tokens=200,
        price_table='{"*": {"input": 1.0, "output": 2.0}}',
        response_format="none",
    )
    estimate = SynthesisRun(settings).estimate()
    assert f"{estimate.brainstorm_requests + estimate.example_requests} requests to send" in dry
    assert estimate.example_requests == 40 and estimate.completion_tokens == 200 * (40 + estimate.brainstorm_requests)
    counts = family_counts(40, resolve_mix(None, None))
    assert estimate.examples_without_tasks == 40 - counts["sts"] - counts["bitext"]  # their tasks are fixed
    assert f"at most ${estimate.cost_usd:.4f}" in dry

    assert generate_main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == dry.strip()  # printed before the run
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["complete"] and report["prompt_tokens"] <= estimate.prompt_tokens
    assert report["completion_tokens"] <= estimate.completion_tokens
    assert report["estimated_cost_usd"] <= estimate.cost_usd
    again = SynthesisRun(settings).estimate()
    assert (again.brainstorm_requests, again.example_requests, again.prompt_tokens) == (0, 0, 0)


# -- the server's rate-limit signals ---------------------------------------------------------------------------
def test_retry_after_ms_wins_over_the_backoff(fake_openai, tmp_path):
    fake_openai.headers = lambda kind, n: {"retry-after-ms": "300"} if kind == "429" else {}
    fake_openai.force("429")
    _, latest = run_backend(fake_openai, requests(1), tmp_path, concurrency=1, initial_wait=10.0)
    first, second = arrivals(fake_openai)
    assert 0.3 <= second - first < 1.5 and latest["r0"]["attempts"] == 2


def test_an_http_date_retry_after_is_waited_for(fake_openai, tmp_path):
    at = time.time() + 2
    fake_openai.headers = lambda kind, n: {"Retry-After": email.utils.formatdate(at, usegmt=True)} if n == 0 else {}
    fake_openai.force("429")
    _, latest = run_backend(fake_openai, requests(1), tmp_path, concurrency=1, initial_wait=10.0)
    first, second = arrivals(fake_openai)
    assert at - 1.05 <= second <= at + 1.0 and latest["r0"]["status"] == "ok"  # the date has whole seconds


def test_x_should_retry_overrides_the_status(fake_openai, tmp_path):
    fake_openai.headers = lambda kind, n: {"x-should-retry": "false" if kind == "500" else "true"}
    fake_openai.force("500")
    _, latest = run_backend(fake_openai, requests(1), tmp_path, concurrency=1, initial_wait=0.01)
    assert fake_openai.stats.requests == 1 and latest["r0"]["status"] == "failed"  # not retried, not "refused"

    fake_openai.reset_stats()
    fake_openai.force("400")  # a 400 the server says to retry: retried, then answered
    _, latest = run_backend(fake_openai, [requests(2)[1]], tmp_path, concurrency=1, initial_wait=0.01)
    assert fake_openai.stats.requests == 2 and latest["r1"]["status"] == "ok"


def test_x_ratelimit_headers_pause_sending_until_the_window_resets(fake_openai, tmp_path):
    # the second answer says no request is left in this window, which resets in 800 ms
    fake_openai.headers = lambda kind, n: (
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "800ms"}
        if n == 1
        else {"x-ratelimit-remaining-requests": "100", "x-ratelimit-reset-requests": "1s"}
    )
    run_backend(fake_openai, requests(4), tmp_path, concurrency=1)
    times = arrivals(fake_openai)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps[1] >= 0.75 and gaps[0] < 0.5 and gaps[2] < 0.5


def test_reset_durations_in_openai_format():
    assert parse_duration("6m0s") == 360 and parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1h2m3.5s") == pytest.approx(3723.5) and parse_duration("1.5") == 1.5
    assert parse_duration("soon") is None and parse_duration(None) is None


def test_rpm_is_held_in_every_window(fake_openai, tmp_path):
    # 600 per minute in a 1 s window: 10 at once, then 10 a second
    started = time.time()
    run_backend(fake_openai, requests(30), tmp_path, concurrency=8, rpm=600, rate_window=1.0)
    times = arrivals(fake_openai)
    assert len(times) == 30 and times[-1] - started >= 1.8
    assert max(sum(1 for t in times if s <= t < s + 1.0) for s in times) <= 20  # a full bucket + 1 s of refill


def test_tpm_counts_real_usage_not_the_completion_cap(fake_openai, tmp_path):
    fake_openai.responder = lambda body: "y" * 400  # 25 + 100 = 125 tokens an answer
    started = time.time()
    # 24,000 a minute = 400 a second in a 1 s window. The first request takes a full bucket (its cap of 4,000 is
    # all that is known), the next ones the 125 the answers really use: about 2 s in all, where a cap reserved
    # per request would take a bucket each (7 s+)
    run_backend(fake_openai, requests(8, max_tokens=4000), tmp_path, concurrency=4, tpm=24_000, rate_window=1.0)
    times = arrivals(fake_openai)
    assert 1.2 <= times[-1] - started < 4.0
    assert max(125 * sum(1 for t in times if s <= t < s + 1.0) for s in times) <= 800  # a bucket + 1 s of refill
