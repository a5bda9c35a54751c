"""Structured outputs: schemas derived from the family definitions, `auto` detection per kind of server, refusals."""

from __future__ import annotations

import json

import jsonschema
import pytest

from e5_mistral.families import FAMILIES, family_spec
from e5_mistral.llm.journal import Journal
from e5_mistral.synthesis.cli import main
from e5_mistral.synthesis.parsing import Rejected, parse_brainstorm, parse_example
from e5_mistral.synthesis.runner import SynthesisRun, generate
from e5_mistral.synthesis.structured import brainstorm_schema, example_schema, response_format
from tests.fake_openai import FakeOpenAIServer
from tests.helpers.synthesis_fakes import responder, run_args


def _schema_accepts(schema: dict, obj) -> bool:
    try:
        jsonschema.validate(obj, schema)
        return True
    except jsonschema.ValidationError:
        return False


def _parser_accepts(family: str, obj) -> bool:
    try:
        parse_example(family, json.dumps(obj))
        return True
    except Rejected:
        return False


def _variants(family: str):
    keys = family_spec(family).output_keys
    valid = {key: f"distinct text {i}" for i, key in enumerate(keys)}
    yield valid
    for key in keys:
        yield {k: v for k, v in valid.items() if k != key}  # missing key
        for bad in (3, {"nested": "x"}, ["a"], None):
            yield {**valid, key: bad}  # not a string
    yield {**valid, "extra": "text"}  # extra key


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_schema_accepts_what_the_parser_accepts(family):
    schema = example_schema(family)
    assert schema["required"] == list(family_spec(family).output_keys) and schema["additionalProperties"] is False
    verdicts = [(_schema_accepts(schema, obj), _parser_accepts(family, obj)) for obj in _variants(family)]
    assert all(s == p for s, p in verdicts), verdicts
    assert sum(s for s, _ in verdicts) == 1  # only the valid example passes


def test_brainstorm_schemas_and_both_shapes_parse():
    tasks = ["Retrieve recipes for a dish.", "Find papers on a topic."]
    assert _schema_accepts(brainstorm_schema(top_level_object=True), {"tasks": tasks})
    assert not _schema_accepts(brainstorm_schema(top_level_object=True), tasks)
    assert _schema_accepts(brainstorm_schema(top_level_object=False), tasks)
    assert parse_brainstorm(json.dumps({"tasks": tasks})) == parse_brainstorm(json.dumps(tasks)) == tasks
    strict = response_format("json_schema", "brainstorm", "short_long")
    assert strict["json_schema"]["strict"] is True and strict["json_schema"]["schema"]["required"] == ["tasks"]
    assert response_format("json_object", "brainstorm", "short_long") == {
        "type": "json_object",
        "schema": brainstorm_schema(False),
    }
    assert response_format("none", "example", "sts") is None


@pytest.mark.parametrize(
    "behaviour,chosen,plan_type",
    [
        ("openai", "json_schema", "json_schema"),
        ("llamacpp", "json_object", "json_object"),
        ("transformers", "none", None),
    ],
)
def test_auto_picks_the_shape_each_server_enforces(tmp_path, behaviour, chosen, plan_type):
    with FakeOpenAIServer(responder=responder, structured=behaviour) as server:
        args = run_args(server, tmp_path / "out", num_examples=24, response_format="auto")
        report = generate(args).report
        formats = server.stats.response_formats
        # the probe: json_schema first, then json_object where refused or not followed; a 500 is checked with the
        # same request without a schema (it succeeds: the format was refused, the server works)
        expected = {
            "openai": ["json_schema"],
            "llamacpp": ["json_schema", None, "json_object"],
            "transformers": ["json_schema", "json_object"],
        }[behaviour]
        probes = len(expected)
        assert [(f or {}).get("type") for f in formats[:probes]] == expected
        plan_formats = formats[probes:]
        assert len(plan_formats) == report["requests_sent"] - probes
        assert {(f or {}).get("type") for f in plan_formats} == {plan_type}
        if plan_type == "json_schema":
            names = {f["json_schema"]["name"] for f in plan_formats}
            assert {"short_long_tasks", "short_long_example", "sts_example"} <= names
            assert all(f["json_schema"]["strict"] for f in plan_formats)
        if plan_type == "json_object":
            schemas = [f["schema"] for f in plan_formats]
            assert example_schema("sts") in schemas and brainstorm_schema(False) in schemas
    assert report["complete"] and report["accepted"] > 0
    assert report["response_format"]["chosen"] == chosen
    assert (
        json.loads((tmp_path / "out" / "run_config.json").read_text())["response_format_resolved"]["chosen"] == chosen
    )
    assert report["requests_sent"] == server.stats.requests  # the probe's requests are journaled and counted
    if chosen == "none":
        assert set(report["response_format"]["refused"]) == {"json_schema", "json_object"}
        assert "HTTP 400" in report["response_format"]["refused"]["json_schema"]


def test_a_resumed_run_asks_no_probe_and_keeps_its_ids(tmp_path):
    with FakeOpenAIServer(responder=responder, structured="openai") as server:
        args = run_args(server, tmp_path / "out", num_examples=12, response_format="auto")
        first = generate(args).report
        server.reset_stats()
        again = generate(args).report
        assert server.stats.requests == 0
    assert again["accepted"] == first["accepted"] and again["response_format"] == first["response_format"]


def test_a_journal_from_before_structured_outputs_still_resumes(tmp_path):
    with FakeOpenAIServer(responder=responder, structured="openai") as server:
        args = run_args(server, tmp_path / "out", num_examples=12, response_format="none")
        first = generate(args).report
        config = tmp_path / "out" / "run_config.json"
        old = {k: v for k, v in json.loads(config.read_text()).items() if not k.startswith("response_format")}
        config.write_text(json.dumps(old))  # as written before --response-format existed
        server.reset_stats()
        again = generate(run_args(server, tmp_path / "out", num_examples=12, response_format="auto")).report
        assert server.stats.requests == 0
    assert again["accepted"] == first["accepted"]


def test_an_explicit_format_the_server_refuses_is_one_clear_error(tmp_path, capsys):
    with FakeOpenAIServer(responder=responder, structured="transformers") as server:
        code = main(
            [
                "--model",
                "m",
                "--base-url",
                server.base_url,
                "--output",
                str(tmp_path / "o"),
                "--no-progress",
                "--num-examples",
                "4",
                "--response-format",
                "json_schema",
            ],
            prog="e5-mistral generate",
        )
        assert server.stats.requests == 1  # the probe only; no example was sent, no retry of the refusal
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "does not enforce --response-format json_schema (HTTP 400" in err[0]


def test_non_retryable_refusals_are_kept_and_sent_again_only_when_asked(tmp_path):
    with FakeOpenAIServer(responder=responder) as server:
        args = run_args(server, tmp_path / "out", num_examples=6, families=["sts"], concurrency=1)
        server.force("400", 2)
        report = generate(args).report
        assert server.stats.requests == 6  # a 400 is answered once, never retried
        assert report["failed_reasons"] == {"refused": 2} and report["failed"] == 2
        assert report["accepted"] + sum(report["rejected"].values()) + report["duplicates_removed"] == 4
        refused = [r for r in Journal(tmp_path / "out" / "journal").records() if r["status"] == "refused"]
        assert len(refused) == 2 and all("HTTP 400" in r["error"] and "max_tokens" in r["error"] for r in refused)
        server.reset_stats()
        generate(args)
        assert server.stats.requests == 0  # a rerun leaves refused requests alone
        generate(run_args(server, tmp_path / "out", num_examples=6, families=["sts"], retry_refused=True))
        assert server.stats.requests == 2


def test_a_family_goes_on_with_the_tasks_of_its_answered_brainstorms(tmp_path):
    with FakeOpenAIServer(responder=responder) as server:
        # 80 short_long examples at 2 per task: 2 brainstorm calls; the first is refused
        args = run_args(
            server, tmp_path / "out", num_examples=80, families=["short_long"], examples_per_task=2, concurrency=1
        )
        server.force("400", 1)
        run = SynthesisRun(args)
        report = run.run(progress=False).report
    assert report["brainstorm"]["planned"] == 2 and report["brainstorm"]["failed"] == 1
    assert report["brainstorm"]["tasks_unique"] == 20  # the answered list's 20 tasks
    family = report["per_family"]["short_long"]
    assert family["failed"] == 0 and family["accepted"] > 0
    assert family["accepted"] + family["rejected"] + family["duplicates_removed"] == 80
    assert report["acceptance"]["per_family"]["short_long"] == {
        "answered": 80,
        "accepted": family["accepted"],
        "rate": round(family["accepted"] / 80, 4),
    }


def test_a_second_run_on_the_same_folder_stops_naming_the_first_and_a_killed_holder_is_taken_over(tmp_path):
    import signal
    import subprocess
    import sys

    from e5_mistral.errors import E5MistralError

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from e5_mistral.llm.lock import OutputLock; "
            f"lock = OutputLock({str(tmp_path / 'out')!r}).__enter__(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with FakeOpenAIServer(responder=responder) as server:
            args = run_args(server, tmp_path / "out", num_examples=4, families=["sts"])
            with pytest.raises(E5MistralError, match=rf"in use by e5-mistral generate \(PID {holder.pid}\)"):
                generate(args)
            assert server.stats.requests == 0  # nothing was sent
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)
            assert generate(args).report["planned"] == 4  # the dead holder's lock is taken over
    finally:
        holder.kill()
        holder.stdout.close()


def test_a_model_that_refuses_max_tokens_gets_max_completion_tokens(tmp_path):
    with FakeOpenAIServer(responder=responder, structured="openai", refuse_max_tokens=True) as server:
        args = run_args(server, tmp_path / "out", num_examples=6, families=["sts"], response_format="auto")
        report = generate(args).report
        assert server.stats.requests == 1 + 1 + 6  # the refused probe, the probe again, the plan
    assert report["accepted"] + sum(report["rejected"].values()) == 6 and report["failed"] == 0
    resolved = json.loads((tmp_path / "out" / "run_config.json").read_text())["response_format_resolved"]
    assert resolved["max_tokens_param"] == "max_completion_tokens" and resolved["chosen"] == "json_schema"
    plan = SynthesisRun(args).plan(Journal(tmp_path / "out" / "journal").latest())
    bodies = [request.body() for family_plan in plan for request, _ in family_plan.examples]
    assert len(bodies) == 6 and all("max_completion_tokens" in b and "max_tokens" not in b for b in bodies)


def test_reasoning_models_are_sent_max_completion_tokens_by_name():
    from e5_mistral.synthesis.config import SynthesisArguments

    assert "max_completion_tokens" in SynthesisArguments(model="o3-mini", output="o").generation_params()
    assert "max_tokens" in SynthesisArguments(model="gpt-4o-mini", output="o").generation_params()
    explicit = SynthesisArguments(model="gpt-4o-mini", output="o", max_tokens_param="max_completion_tokens")
    assert explicit.generation_params()["max_completion_tokens"] == 4096


def test_a_sampling_seed_gives_each_request_its_own_seed_and_changes_ids_only_when_set():
    from e5_mistral.synthesis.config import SynthesisArguments
    from e5_mistral.synthesis.plan import example_request

    slots = {"unit": "sentence", "high_score": "4", "low_score": "2.5", "difficulty": "college", "language": "English"}
    plain = SynthesisArguments(model="m", output="o").generation_params()
    seeded = SynthesisArguments(model="m", output="o", sampling_seed=0).generation_params()
    a, b = (example_request("sts", "t", i, slots, seeded) for i in (0, 1))  # the same prompt twice
    assert a.messages == b.messages and a.body()["seed"] != b.body()["seed"]
    assert example_request("sts", "t", 0, slots, seeded).body()["seed"] == a.body()["seed"]  # repeatable
    assert "sampling_seed" not in a.body() and "seed" not in example_request("sts", "t", 0, slots, plain).body()
    assert example_request("sts", "t", 0, slots, plain).request_id != a.request_id
