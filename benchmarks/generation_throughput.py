"""Throughput of the online generation path against a fake endpoint with a fixed latency.

With ``--concurrency C`` requests in flight and ``--latency L`` seconds per answer, no client can beat C / L
requests per second (64 / 0.2 s = 320/s); the script prints each mode's examples/s and its ratio to that ideal
(target >= 0.9 for the library path):

* ``raw gather``: plain ``asyncio.gather`` of ``AsyncOpenAI().chat.completions.create`` calls under a
  semaphore, with the client's default httpx transport (the baseline: what a hand-written loop gets);
* ``raw gather, aiohttp``: the same over ``openai.DefaultAioHttpClient``;
* ``OnlineBackend``: ``e5_mistral.llm.online.OnlineBackend.run`` with a real (fsynced) journal, over the
  transport ``--http-client`` picks (default ``auto``: aiohttp when installed), and ``OnlineBackend, httpx``;
* ``OnlineBackend, no fsync``: the same with the journal's per-record ``os.fsync`` patched out (diagnostic
  only: it shows what the durability guarantee costs on this disk, whose fsync latency is printed too);
* ``OnlineBackend + budget/rpm/tpm``: the same with ``--max-cost``/``--max-total-tokens`` (every request's worst
  case reserved, then reconciled with its usage) and ``--rpm``/``--tpm`` buckets, all far above what the run needs:
  what their bookkeeping costs;
* ``SynthesisRun``: the whole ``e5-mistral generate`` path: plan, brainstorm stage, example stage, parsing,
  dedup, report and dataset files (its brainstorm round trip and file writing count against it), then its
  example stage alone (the rate a long run converges to) and how its time splits.

Every mode pays its own fixed costs (client and SSL context, 64 connections, the first wave sent at once),
which weigh more in a short run: the default 1920 requests (6 s at the ideal rate) shows the steady state;
``--requests 640`` shows those costs.

The fake server runs in a child process by default (``--server-in-process`` to share this one).

    python -m benchmarks.generation_throughput --concurrency 64 --latency 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import openai

from e5_mistral.families import FAMILY_SPECS
from e5_mistral.llm.online import HTTP_CLIENTS, OnlineBackend, make_http_client
from e5_mistral.synthesis.parsing import Rejected, parse_example
from e5_mistral.synthesis.plan import example_request, sample_slots
from tests.fake_openai import FakeOpenAIServer


REPO_ROOT = Path(__file__).resolve().parents[1]


FAMILY = "short_long"
SHORT_KEYS = {"user_query", "label", "misleading_label", "input"}  # the others are documents or sentences
PARAMS = {"model": "fake", "temperature": 1.0, "top_p": 1.0, "max_tokens": 512}
_counter = itertools.count()


def responder(body: dict) -> str:
    """A valid example of the family the prompt asks for (its JSON keys are named in the prompt), or a task list for
    a brainstorm prompt; every answer is unique."""
    n = next(_counter)
    prompt = body["messages"][0]["content"]
    if prompt.startswith("Brainstorm"):
        return json.dumps([f"Retrieve documents answering question type {n}-{i}." for i in range(20)])
    named = (s for s in FAMILY_SPECS.values() if all(f'"{k}"' in prompt for k in s.output_keys))
    spec = next(named, FAMILY_SPECS[FAMILY])  # a probe of the response format names no family
    return json.dumps({key: _text(n, k, key) for k, key in enumerate(spec.output_keys)})


def _text(n: int, k: int, key: str) -> str:
    """Answer ``n``'s text for ``key``, as long as the prompts ask: a few words for queries and labels, about 60 for
    documents and long inputs, drawn from 5,000 words."""
    length = 8 if key in SHORT_KEYS else 60
    draw = random.Random(n * 16 + k)
    return f"answer {n} {key} " + " ".join(f"w{draw.randrange(5000)}" for _ in range(length))


def _serve(latency: float, conn) -> None:
    server = FakeOpenAIServer(responder=responder, latency=latency)
    conn.send(server.port)
    server._httpd.serve_forever()


class ServerProcess:
    """The fake server in its own process, so its threads do not share the client's GIL."""

    def __init__(self, latency: float):
        parent, child = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("fork").Process(target=_serve, args=(latency, child), daemon=True)
        self.process.start()
        self.base_url = f"http://127.0.0.1:{parent.recv()}/v1"

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.join()


def example_requests(count: int) -> list:
    tasks = [f"Retrieve documents for task {i}." for i in range(max(1, count // 3))]
    languages = {"English": 1.0}
    return [
        example_request(FAMILY, task, use, sample_slots(FAMILY, 0, task, use, languages), PARAMS)
        for task, use in ((tasks[i % len(tasks)], i // len(tasks)) for i in range(count))
    ]


async def raw_gather(base_url: str, requests: list, concurrency: int, http_client: str = "httpx") -> int:
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="EMPTY", max_retries=0, http_client=make_http_client(http_client)
    )
    semaphore = asyncio.Semaphore(concurrency)

    async def one(request) -> int:
        async with semaphore:
            response = await client.chat.completions.create(messages=list(request.messages), **request.params)
        return _accepted(response.choices[0].message.content, response.choices[0].finish_reason)

    try:
        return sum(await asyncio.gather(*(one(r) for r in requests)))
    finally:
        await client.close()


def online_backend_without_fsync(
    base_url: str, requests: list, concurrency: int, directory: Path, http_client: str
) -> int:
    from unittest import mock

    from e5_mistral.llm import journal

    with mock.patch.object(journal.os, "fsync", lambda fd: None):
        return asyncio.run(online_backend(base_url, requests, concurrency, directory / "nofsync", http_client))


def fsync_latency(directory: Path, count: int = 50) -> float:
    """Seconds per append+flush+fsync of a 1 kB line, as the journal does per record."""
    with open(directory / "fsync-probe", "a") as handle:
        start = time.perf_counter()
        for _ in range(count):
            handle.write("x" * 1000 + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    return (time.perf_counter() - start) / count


async def online_backend(
    base_url: str, requests: list, concurrency: int, directory: Path, http_client: str, limits: bool = False
) -> int:
    """``limits``: a budget (each request's worst case reserved, then reconciled) and --rpm/--tpm buckets, all set
    far above what the run needs, so that only their bookkeeping is measured."""
    from e5_mistral.llm.cost import Budget
    from e5_mistral.llm.journal import ObservedJournal

    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="EMPTY", max_retries=0, http_client=make_http_client(http_client)
    )
    budget = Budget(max_cost=1e9, max_tokens=10**12, prices={"*": {"input": 1.0, "output": 2.0}}) if limits else None
    settings = dict(budget=budget, rpm=1e9, tpm=1e12) if limits else {}
    try:
        name = f"journal-{http_client}{'-limits' if limits else ''}"
        with ObservedJournal(directory / name, [budget.add] if budget else []) as journal:
            await OnlineBackend(client, concurrency=concurrency, **settings).run(requests, journal)
            records = journal.latest().values()
    finally:
        await client.close()
    return sum(_accepted(r["content"], r["finish_reason"]) for r in records if r["status"] == "ok")


def synthesis_run(base_url: str, count: int, concurrency: int, directory: Path, http_client: str, stages: dict) -> int:
    """The whole run; ``stages`` gets each stage's seconds (a timing wrapper, diagnostic only)."""
    from unittest import mock

    from e5_mistral.synthesis.config import SynthesisArguments
    from e5_mistral.synthesis.runner import SynthesisRun

    stage = SynthesisRun._stage

    async def timed_stage(self, name, *rest):
        start = time.perf_counter()
        try:
            await stage(self, name, *rest)
        finally:
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - start

    args = SynthesisArguments(
        model="fake",
        base_url=base_url,
        output=str(directory / "run"),
        num_examples=count,
        families=[FAMILY],
        languages=["English"],
        concurrency=concurrency,
        no_progress=True,
        http_client=http_client,
    )
    with mock.patch.object(SynthesisRun, "_stage", timed_stage):
        return SynthesisRun(args).run(progress=False).report["accepted"]


def _accepted(content: str | None, finish_reason: str | None) -> int:
    try:
        parse_example(FAMILY, content, finish_reason)
        return 1
    except Rejected:
        return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1920)  # 6 s at the ideal rate: past the fixed per-run costs
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the fake server waits before each answer")
    parser.add_argument(
        "--modes",
        default="raw,raw-aiohttp,online,online-httpx,online-nofsync,online-limits,run",
        help="comma-separated: raw, raw-aiohttp, online, online-httpx, online-nofsync, online-limits, run",
    )
    parser.add_argument(
        "--http-client",
        default="auto",
        choices=HTTP_CLIENTS,
        help="transport of the online, online-nofsync and run modes",
    )
    parser.add_argument(
        "--server-in-process",
        action="store_true",
        help="run the fake server in this process (its threads then compete for the GIL)",
    )
    parser.add_argument("--min-ratio", type=float, default=None, help="exit 1 if OnlineBackend's ratio is below this")
    args = parser.parse_args(argv)

    ideal = args.concurrency / args.latency
    requests = example_requests(args.requests)
    rows = [("ideal (concurrency / latency)", None, args.requests, ideal)]
    ratios, run_split = {}, None
    server_cm = (
        FakeOpenAIServer(responder=responder, latency=args.latency)
        if args.server_in_process
        else ServerProcess(args.latency)
    )
    with server_cm as server, tempfile.TemporaryDirectory(dir=REPO_ROOT) as tmp:  # the disk the journal uses
        fsync_ms = fsync_latency(Path(tmp)) * 1000
        url, n, conc, tmp_path, http = server.base_url, args.requests, args.concurrency, Path(tmp), args.http_client
        stages = {}
        modes = {
            "raw": ("raw gather + semaphore", lambda: asyncio.run(raw_gather(url, requests, conc))),
            "raw-aiohttp": ("raw gather, aiohttp", lambda: asyncio.run(raw_gather(url, requests, conc, "aiohttp"))),
            "online": (
                f"OnlineBackend + journal ({http})",
                lambda: asyncio.run(online_backend(url, requests, conc, tmp_path, http)),
            ),
            "online-httpx": (
                "OnlineBackend + journal (httpx)",
                lambda: asyncio.run(online_backend(url, requests, conc, tmp_path, "httpx")),
            ),
            "online-nofsync": (
                f"OnlineBackend, no fsync ({http})",
                lambda: online_backend_without_fsync(url, requests, conc, tmp_path, http),
            ),
            "online-limits": (
                f"OnlineBackend + budget/rpm/tpm ({http})",
                lambda: asyncio.run(online_backend(url, requests, conc, tmp_path, http, limits=True)),
            ),
            "run": (f"SynthesisRun, end to end ({http})", lambda: synthesis_run(url, n, conc, tmp_path, http, stages)),
        }
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            if mode not in modes:
                parser.error(f"unknown mode {mode!r}; choose from {', '.join(modes)}")
            name, fn = modes[mode]
            start = time.perf_counter()
            accepted = fn()
            seconds = time.perf_counter() - start
            rows.append((name, seconds, accepted, accepted / seconds))
            ratios[mode] = accepted / seconds / ideal
            if mode == "run" and "examples" in stages:  # the steady state that a long run converges to
                rows.append(("  its example stage", stages["examples"], accepted, accepted / stages["examples"]))
                run_split = (stages.get("brainstorm", 0.0), stages["examples"], seconds - sum(stages.values()))
    print(
        f"{args.requests} requests, concurrency {args.concurrency}, latency {args.latency:.3f} s, ideal {ideal:.1f}/s; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; fsync {fsync_ms:.2f} ms"
    )
    raw_rate = next((rate for name, _, _, rate in rows if name.startswith("raw")), None)
    print(f"{'mode':38} {'seconds':>8} {'examples':>9} {'examples/s':>11} {'ratio':>6} {'vs raw':>7}")
    for name, seconds, accepted, rate in rows:
        secs = f"{seconds:8.2f}" if seconds is not None else f"{args.requests / ideal:8.2f}"
        vs_raw = f"{rate / raw_rate:7.2f}" if raw_rate and seconds is not None else " " * 7
        print(f"{name:38} {secs} {accepted:9d} {rate:11.1f} {rate / ideal:6.2f} {vs_raw}")
    if run_split is not None:
        print(
            "SynthesisRun: brainstorm stage {:.2f} s, example stage {:.2f} s, the rest {:.2f} s (plan, endpoint check, "
            "parsing, dedup, report and dataset files: mostly fixed costs that a long run amortizes)".format(
                *run_split
            )
        )
    if args.min_ratio is not None and ratios.get("online", 0.0) < args.min_ratio:
        print(
            f"OnlineBackend ratio {ratios.get('online', 0.0):.2f} is below --min-ratio {args.min_ratio}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
