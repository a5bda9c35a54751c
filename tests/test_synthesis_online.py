"""The online backend's request path: the raw ``post`` route, both HTTP transports, retries, odd answers, plan reuse."""

from __future__ import annotations

import asyncio
import json
import time

import httpx2
import openai
import pytest

from e5_mistral.llm.journal import Journal, Request
from e5_mistral.llm.online import EndpointError, OnlineBackend, make_http_client
from e5_mistral.synthesis import planner as planner_module
from e5_mistral.synthesis.runner import generate
from tests.fake_openai import FaultRates
from tests.helpers.synthesis_fakes import responder, run_args


COMPLETION = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
}


def _request(i: int = 0, **params) -> Request:
    return Request(
        f"id-{i}",
        "example",
        "sts",
        ({"role": "user", "content": f"prompt {i}"},),
        {"model": "m", "temperature": 1.0, "max_tokens": 64, **params},
    )


def _mock_client(make, answer=lambda request: httpx2.Response(200, json=COMPLETION)):
    seen = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return answer(request)

    return make(httpx2.AsyncClient(transport=httpx2.MockTransport(handler))), seen


@pytest.mark.parametrize(
    "make",
    [
        lambda http: openai.AsyncOpenAI(
            base_url="http://llm.test/v1", api_key="sk-test", max_retries=0, http_client=http
        ),
        lambda http: openai.AsyncAzureOpenAI(
            azure_endpoint="https://res.openai.azure.com",
            api_version="2024-10-21",
            api_key="az-test",
            max_retries=0,
            http_client=http,
        ),
    ],
    ids=["openai", "azure"],
)
def test_backend_sends_exactly_what_chat_completions_create_sends(make, tmp_path):
    request = _request(extra_body={"generation_config": '{"do_sample": true}'})
    client, seen = _mock_client(make)

    async def both():
        # the raw-response route: the backend reads the answer's rate-limit headers, as `with_raw_response` does
        await client.chat.completions.with_raw_response.create(
            messages=list(request.messages),
            extra_body={"generation_config": '{"do_sample": true}'},
            **{k: v for k, v in request.params.items() if k != "extra_body"},
        )
        with Journal(tmp_path) as journal:
            await OnlineBackend(client, concurrency=1).run([request], journal)
        return journal

    journal = asyncio.run(both())
    reference, ours = seen
    assert (ours.method, ours.url) == (reference.method, reference.url)
    assert dict(ours.headers) == dict(reference.headers)  # same auth header (Bearer or api-key), same client headers
    assert json.loads(ours.content) == json.loads(reference.content) == request.body()
    [record] = journal.records()
    assert (record["status"], record["content"], record["finish_reason"]) == ("ok", "hi", "stop")
    assert record["usage"] == {"prompt_tokens": 3, "completion_tokens": 5} and record["attempts"] == 1


@pytest.mark.parametrize(
    "body, status, content, error",
    [
        (
            "<html>busy</html>",
            "failed",
            None,
            "not a JSON object",
        ),  # a 200 that is no completion: asked again next run
        (json.dumps({"choices": []}), "ok", None, None),  # no choice: parsing later rejects it as empty_response
        (json.dumps({"choices": [{"message": None, "finish_reason": "length"}], "usage": None}), "ok", None, None),
    ],
)
def test_odd_answers_are_journaled_not_raised(body, status, content, error, tmp_path):
    content_type = "text/html" if body.startswith("<") else "application/json"
    client, _ = _mock_client(
        lambda http: openai.AsyncOpenAI(base_url="http://llm.test/v1", api_key="k", max_retries=0, http_client=http),
        lambda request: httpx2.Response(200, content=body.encode(), headers={"content-type": content_type}),
    )
    with Journal(tmp_path) as journal:
        asyncio.run(OnlineBackend(client, concurrency=1).run([_request()], journal))
    [record] = journal.records()
    assert (record["status"], record["content"]) == (status, content)
    assert record["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    assert (error is None and record["error"] is None) or error in record["error"]


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
def test_each_transport_retries_honours_retry_after_and_times_out(fake_openai, tmp_path, transport):
    fake_openai.responder = lambda body: "answer"
    fake_openai.faults = FaultRates(retry_after=0.4, slow_seconds=1.5)
    fake_openai.force("429")
    fake_openai.force("500")
    fake_openai.force("timeout")
    client = openai.AsyncOpenAI(
        base_url=fake_openai.base_url, api_key="k", max_retries=0, timeout=0.5, http_client=make_http_client(transport)
    )

    async def go():
        try:
            with Journal(tmp_path / "j") as journal:
                await OnlineBackend(client, concurrency=1, initial_wait=0.01, max_wait=2.0).run([_request()], journal)
        finally:
            await client.close()
        return journal

    start = time.monotonic()
    journal = asyncio.run(go())
    assert time.monotonic() - start >= 0.4 + 0.5  # the server's Retry-After, then the client timeout
    [record] = journal.records()
    assert (record["status"], record["content"], record["attempts"]) == ("ok", "answer", 4)
    assert fake_openai.stats.requests == 4


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
def test_each_transport_stops_on_a_rejected_key_and_on_a_dead_endpoint(fake_openai, transport):
    fake_openai.api_key = "right"

    async def check(base_url, key):
        client = openai.AsyncOpenAI(
            base_url=base_url, api_key=key, max_retries=0, timeout=2, http_client=make_http_client(transport)
        )
        try:
            backend = OnlineBackend(client, concurrency=1, max_attempts=1)
            await backend.check_endpoint()
            with Journal(journal_dir) as journal:
                await backend.run([_request()], journal)
        finally:
            await client.close()

    import tempfile

    with tempfile.TemporaryDirectory() as journal_dir:
        with pytest.raises(EndpointError, match="rejected the API key"):
            asyncio.run(check(fake_openai.base_url, "wrong"))
        with pytest.raises(EndpointError, match="cannot reach the endpoint"):
            asyncio.run(check("http://127.0.0.1:9/v1", "right"))  # the discard port: nothing listens


def test_make_http_client(monkeypatch):
    assert make_http_client("httpx") is None  # the openai client's own default
    aio = make_http_client("auto")
    assert isinstance(aio, httpx2.AsyncClient) and type(aio).__name__ != "AsyncClient"  # aiohttp is installed here
    with pytest.raises(ValueError, match="--http-client must be one of"):
        make_http_client("curl")

    def missing():
        raise RuntimeError("To use the aiohttp client you must have installed the package with the `aiohttp` extra")

    monkeypatch.setattr(openai, "DefaultAioHttpClient", missing)
    assert make_http_client("auto") is None  # falls back to httpx
    with pytest.raises(ValueError, match=r"pip install 'openai\[aiohttp\]'"):
        make_http_client("aiohttp")


def test_a_faulty_run_gives_the_same_report_over_both_transports(fake_openai, tmp_path):
    fake_openai.responder = responder
    # A 3 s client timeout: only the injected 4 s stalls time out, never a reply slowed by a busy CI machine
    # (an extra retry there would shift that prompt's later fault draws and the request count).
    fake_openai.faults = FaultRates(
        rate_429=0.2, retry_after=0.05, rate_500=0.1, rate_timeout=0.05, rate_malformed=0.1, slow_seconds=4.0
    )
    reports = {}
    for transport in ("httpx", "aiohttp"):
        fake_openai.reset_stats()
        args = run_args(fake_openai, tmp_path / transport, num_examples=40, http_client=transport, timeout=3.0)
        reports[transport] = generate(args).report
        assert reports[transport]["requests_sent"] == fake_openai.stats.requests
    assert reports["httpx"] == reports["aiohttp"]  # faults are drawn per (prompt, attempt): the runs are identical
    assert reports["httpx"]["complete"] and reports["httpx"]["rejected"]["invalid_json"] > 0


def test_the_example_plan_is_built_once_per_run(fake_openai, tmp_path, monkeypatch):
    fake_openai.responder = responder
    built = []
    original = planner_module.example_request
    monkeypatch.setattr(planner_module, "example_request", lambda *a, **k: built.append(a[:3]) or original(*a, **k))
    report = generate(run_args(fake_openai, tmp_path / "out", num_examples=30, families=["short_long", "sts"])).report
    assert report["planned"] == 30 and report["complete"]
    assert len(built) == len(set(built)) == 30  # (family, task, use): each example built once


def test_http_client_is_checked_with_the_other_settings():
    from e5_mistral.synthesis.config import SynthesisArguments

    with pytest.raises(ValueError, match="--http-client must be one of auto, aiohttp, httpx"):
        SynthesisArguments(model="m", output="o", http_client="requests")
