"""The LLM client against endpoints that bite: reasoning models, an endpoint that takes no connection, a run whose
every request is refused."""

from __future__ import annotations

import json
import socket
import time

from e5_mistral.synthesis.cli import main as generate_main
from tests.fake_openai import FakeOpenAIServer
from tests.helpers import generate_argv, one_line
from tests.helpers.synthesis_fakes import responder


def test_a_reasoning_model_gets_json_schema_and_answers(tmp_path, monkeypatch):
    """A server that refuses max_tokens and every temperature but 1, and spends 200 hidden tokens before answering:
    `auto` still resolves to json_schema, and the examples come back."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAIServer(responder=responder, structured="openai", reasoning_tokens=200) as server:
        # the two families for which the fake responder plants no bad answer
        argv = generate_argv(
            server.base_url, tmp_path / "out", "--num-examples", "20", "--families", "short_short", "long_long"
        )
        code = generate_main(argv)
        bodies = server.stats.response_formats
    assert code == 0
    resolved = json.loads((tmp_path / "out" / "run_config.json").read_text())["response_format_resolved"]
    assert resolved["chosen"] == "json_schema" and resolved["max_tokens_param"] == "max_completion_tokens"
    assert resolved["default_sampling"] is True
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["accepted"] >= 0.9 * report["planned"] and report["planned"] == 20
    assert "truncated" not in report["rejected"]
    assert report["response_format"]["chosen"] == "json_schema"
    assert sum(1 for b in bodies if b and b["type"] == "json_schema") >= 20


def test_the_judge_gets_answers_from_a_reasoning_model(tmp_path):
    from e5_mistral.mining.judge import JudgeArguments, judge_negatives

    rows = [
        {
            "query": f"facts about topic {i}",
            "instruction": "Given a question, retrieve passages that answer it",
            "positive": f"A text about topic {i}.",
            "negative": [f"An unrelated text {i}.", f"Another text {i}."],
            "negative_scores": [None, 0.5],
        }
        for i in range(6)
    ]
    # the fake enforces the verdict's schema with its first value, "yes": every mined negative is relevant
    with FakeOpenAIServer(structured="openai", reasoning_tokens=200) as server:
        args = JudgeArguments(judge_model="judge", judge_base_url=server.base_url, judge_retry_initial_wait=0.01)
        kept, counts = judge_negatives(rows, args, tmp_path / "judge")
    assert counts["judged"] == counts["candidates"] == 6 and counts["unjudged"] == 0
    assert counts["response_format"] == "json_schema"
    assert counts["dropped"] == 6 and [r["negative"] for r in kept] == [[f"An unrelated text {i}."] for i in range(6)]


def test_an_endpoint_that_takes_no_connection_fails_fast_inone_line(tmp_path, capsys, monkeypatch):
    """A loopback port whose listen queue is full: connecting hangs, as with a firewalled host."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):  # fill the accept queue; later connections get no answer at all
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)
    started = time.monotonic()
    try:
        code = generate_main(generate_argv(f"http://127.0.0.1:{port}/v1", tmp_path / "out", "--num-examples", "4"))
    finally:
        for s in [listener, *fillers]:
            s.close()
    elapsed = time.monotonic() - started
    line = one_line(capsys.readouterr().err)
    assert code == 1 and elapsed <= 30, elapsed
    assert "cannot reach the endpoint" in line and str(port) in line


def test_a_run_whose_every_request_is_refused_stops_early(fake_openai, tmp_path, capsys, monkeypatch):
    from e5_mistral.llm.online import REFUSAL_BREAKER

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    fake_openai.responder = responder
    fake_openai.force("400", 500)
    argv = generate_argv(fake_openai.base_url, tmp_path / "out", "--num-examples", "200", "--response-format", "none")
    code = generate_main([*argv, "--concurrency", "4"])
    line = one_line(capsys.readouterr().err)
    assert code == 1
    assert f"refused the first {REFUSAL_BREAKER} requests" in line and "HTTP 400" in line and "--retry-refused" in line
    assert REFUSAL_BREAKER <= fake_openai.stats.requests <= REFUSAL_BREAKER + 4


def test_refused_examples_are_reported_apart_from_unfinished(fake_openai, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    fake_openai.responder = responder
    argv = generate_argv(fake_openai.base_url, tmp_path / "out", "--num-examples", "12", "--response-format", "none")
    fake_openai.force("ok", 4)  # the brainstorm answers (one a family of the two below)
    fake_openai.force("400", 2)
    code = generate_main([*argv, "--families", "short_long", "sts", "--concurrency", "1"])
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    refused = report["failed_reasons"].get("refused", 0)
    assert code == 0 and refused >= 1
    assert f"{refused} examples were refused by the endpoint" in err and "--retry-refused" in err
    assert "not finished" not in err
