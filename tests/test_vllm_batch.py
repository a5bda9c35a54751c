"""`--backend vllm-batch`: a run writes input files and the `vllm run-batch` commands, a stand-in answers them in
vLLM's output format, and reruns import the answers with the journal, resume and accounting of the other back ends."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from e5_mistral.llm.journal import Journal
from e5_mistral.llm.vllm_batch import output_of
from e5_mistral.synthesis.runner import generate
from tests.helpers.synthesis_fakes import responder, run_args


def vllm_line(custom_id: str, body: dict, fail: bool = False) -> str:
    """One line as `vllm run-batch` writes it."""
    if fail:
        response = {"status_code": 400, "request_id": f"vllm-batch-{custom_id}", "body": {"object": "error"}}
        return json.dumps({"id": f"vllm-{custom_id}", "custom_id": custom_id, "response": response, "error": "bad"})
    completion = {
        "object": "chat.completion",
        "model": body["model"],
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": responder(body)}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    response = {"status_code": 200, "request_id": f"vllm-batch-{custom_id}", "body": completion}
    return json.dumps({"id": f"vllm-{custom_id}", "custom_id": custom_id, "response": response, "error": None})


def answer_files(output: Path, fail_first: int = 0) -> int:
    """The stand-in for `vllm run-batch`: answer every input file that has no output yet; returns the lines."""
    answered = 0
    for path in sorted((output / "vllm-batch").glob("input-*.jsonl")):
        if path.name.endswith(".out.jsonl") or output_of(path).exists():
            continue
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert all(line["url"] == "/v1/chat/completions" and line["method"] == "POST" for line in lines)
        out = [vllm_line(x["custom_id"], x["body"], fail=answered + i < fail_first) for i, x in enumerate(lines)]
        output_of(path).write_text("\n".join(out) + "\n")
        answered += len(lines)
    return answered


def test_files_commands_and_imports_until_the_run_is_complete(fake_openai, tmp_path, caplog):
    output = tmp_path / "out"
    args = run_args(fake_openai, output, num_examples=24, backend="vllm-batch", base_url=None)
    caplog.set_level(logging.WARNING)

    first = generate(args)  # brainstorms go to files; nothing is sent anywhere
    assert fake_openai.stats.requests == 0
    reasons = first.report["failed_reasons"]  # brainstormed families wait for tasks, sts and bitext for answers
    assert set(reasons) == {"brainstorm_incomplete", "batch_in_progress"} and sum(reasons.values()) == 24
    commands = [r.getMessage() for r in caplog.records if "vllm run-batch" in r.getMessage()]
    inputs = sorted((output / "vllm-batch").glob("input-*.jsonl"))
    assert len(commands) == len(inputs) == 2  # the brainstorms, then the sts and bitext examples
    assert f"vllm run-batch -i {inputs[0]} -o {output_of(inputs[0])} --model fake-llm" in commands[0]
    assert generate(args).report == first.report  # no answers yet: nothing written again
    assert sorted((output / "vllm-batch").glob("input-*.jsonl")) == inputs

    answer_files(output, fail_first=1)  # one brainstorm fails in vLLM
    second = generate(args)  # imports the task lists, writes the examples and the failed brainstorm again
    assert len({p.name[:9] for p in (output / "vllm-batch").glob("input-*.jsonl")}) >= 3
    answer_files(output)
    generate(args)
    answer_files(output)
    final = generate(args)
    assert second.report["planned"] == final.report["planned"] == 24
    assert final.report["complete"] and final.report["failed"] == 0 and final.report["batches_running"] == 0
    assert final.report["accepted"] >= 18
    records = list(Journal(output / "journal").records())
    assert {r["source"] for r in records} == {"vllm-batch"}
    assert sum(r["status"] == "failed" for r in records) == 1  # the failed line, journaled once
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) == len({r["request_id"] for r in ok})  # no answer journaled twice
    assert final.report["prompt_tokens"] == 10 * len(ok) and final.report["completion_tokens"] == 5 * len(ok)

    again = generate(args)  # nothing left: no file written, nothing imported twice
    assert again.report == final.report and len(list(Journal(output / "journal").records())) == len(records)


def test_the_budget_binds_what_is_written(fake_openai, tmp_path):
    from e5_mistral.llm.cost import worst_case_tokens
    from e5_mistral.synthesis.runner import SynthesisRun

    output = tmp_path / "out"
    args = run_args(fake_openai, output, num_examples=24, backend="vllm-batch", base_url=None, max_tokens=64)
    plan = SynthesisRun(args).plan({})
    worst = sorted(sum(worst_case_tokens(r.body())) for fp in plan for r in fp.brainstorms)
    args.max_total_tokens = worst[0] + worst[1]  # room for two brainstorms' worst cases, not a third

    result = generate(args)
    written = [
        json.loads(x) for p in (output / "vllm-batch").glob("input-*.jsonl") for x in p.read_text().splitlines()
    ]
    assert result.report["budget_stopped"] and 1 <= len(written) <= 2


def test_quoted_commands_unfinished_files_wait_and_foreign_lines_are_skipped(fake_openai, tmp_path, caplog):
    import shlex

    output = tmp_path / "my runs" / "out"  # a space in the path
    args = run_args(fake_openai, output, num_examples=6, backend="vllm-batch", base_url=None, families=["sts"])
    caplog.set_level(logging.WARNING)
    generate(args)
    (path,) = sorted((output / "vllm-batch").glob("input-*.jsonl"))
    command = next(r.getMessage() for r in caplog.records if "vllm run-batch" in r.getMessage())
    argv = shlex.split(command.split("to answer: ", 1)[1])  # pastes into a shell as it is
    assert argv[:6] == ["vllm", "run-batch", "-i", str(path), "-o", str(output_of(path))]

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    answers = [vllm_line(x["custom_id"], x["body"], fail=i == 0) for i, x in enumerate(lines)]
    output_of(path).write_text("\n".join(answers[:2]) + "\n" + answers[2][:40])  # vLLM still writing
    unfinished = generate(args)
    assert unfinished.report["batches_running"] == 1 and not list(Journal(output / "journal").records())
    foreign = vllm_line("not-a-request-of-this-file", lines[0]["body"], fail=True)
    output_of(path).write_text("\n".join(answers + [foreign]) + "\n")
    generate(args)
    generate(args)  # the file is imported once: its failed line is journaled once, the foreign one never
    records = list(Journal(output / "journal").records())
    assert sum(r["status"] == "failed" for r in records) == 1
    assert all(r["request_id"] != "not-a-request-of-this-file" for r in records)
    assert output_of(path).with_suffix(".imported").is_file()
