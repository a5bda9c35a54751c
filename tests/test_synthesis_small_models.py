"""Options for small local LLMs: a system prompt on every request, and brainstorm answers as plain-text lists."""

from __future__ import annotations

import json

from e5_mistral.synthesis.config import SynthesisArguments
from e5_mistral.synthesis.plan import brainstorm_request, example_request
from e5_mistral.synthesis.runner import generate
from e5_mistral.synthesis.templates import ASYMMETRIC_FAMILIES, template_text
from tests.helpers.synthesis_fakes import responder as json_responder
from tests.helpers.synthesis_fakes import run_args
from tests.test_synthesis_run import _invariant


SYSTEM = "You only answer with valid JSON."
# Computed with the code before these options existed: runs without a system prompt keep their ids (and journals).
# The example id is the one since ids stopped depending on the row index (an example is its task, use and slots).
SLOTS = {
    "query_type": "extremely long-tail",
    "query_length": "less than 5 words",
    "clarity": "clear",
    "num_words": "50",
    "language": "English",
    "difficulty": "high school",
}
BRAINSTORM_ID = "042c92666d69f91a07037f4da7d876cf8d8d4b3c58e15bc5588bf10a4e6b6940"
EXAMPLE_ID = "a5d2badd05b57fd29540366cdda6894c373660ee303e65b2d880483c1061bc7f"


def _tasks(family: str) -> list[str]:
    return [f"Given a {family} question about topic number {i}, find the texts that answer it." for i in range(5)]


def _markdown_list(family: str, cut: bool) -> dict:
    """A small model's brainstorm answer: an intro, a heading, bold numbered items; cut mid-item if ``cut``."""
    lines = [f"Here's a list of potential {family} tasks:", "", "- Retrieval tasks:"]
    lines += [f"{i + 1}. **{task}**" for i, task in enumerate(_tasks(family))]
    if cut:
        return {"content": "\n".join(lines) + "\n6. **Given a cut ques", "finish_reason": "length"}
    return {"content": "\n".join(lines) + "\n"}


class Recorder:
    """Answers like a small model (Markdown task lists, JSON examples) and keeps every request body."""

    def __init__(self):
        self.bodies = []

    def __call__(self, body: dict):
        self.bodies.append(body)
        prompt = body["messages"][-1]["content"]  # after the system message, when there is one
        for family in ASYMMETRIC_FAMILIES:
            if prompt == template_text(family, "brainstorm"):
                return _markdown_list(family, cut=family == "long_long")
        return json_responder({"messages": [{"role": "user", "content": prompt}]})

    def prompts(self, kind: str) -> list[str]:
        brainstorms = {template_text(f, "brainstorm") for f in ASYMMETRIC_FAMILIES}
        return [
            b["messages"][-1]["content"]
            for b in self.bodies
            if (b["messages"][-1]["content"] in brainstorms) == (kind == "brainstorm")
        ]


def _text_list_run(fake_openai, output, accept: bool):
    recorder = Recorder()
    fake_openai.responder = recorder
    mix = json.dumps({family: 1 for family in ASYMMETRIC_FAMILIES})
    args = run_args(fake_openai, output, num_examples=40, family_mix=mix, accept_text_task_lists=accept)
    return generate(args), recorder


def test_text_task_lists_feed_the_asymmetric_families_only_with_the_flag(fake_openai, tmp_path):
    result, recorder = _text_list_run(fake_openai, tmp_path / "on", accept=True)
    report = result.report
    _invariant(report)
    assert report["complete"] and report["rejected"].get("no_valid_tasks") is None
    assert report["brainstorm"]["from_text_lists"] == 4 and report["brainstorm"]["reasked"] == 0
    assert report["brainstorm"]["tasks_unique"] == 20  # the headings and long_long's cut last item are dropped
    assert json.loads((tmp_path / "on" / "report.json").read_text())["brainstorm"]["from_text_lists"] == 4
    assert len(recorder.prompts("brainstorm")) == 4
    examples = recorder.prompts("example")
    assert len(examples) == 40
    for family in ASYMMETRIC_FAMILIES:  # 10 examples per family, round-robin over exactly its 5 listed tasks
        used = [task for task in _tasks(family) for prompt in examples if task in prompt]
        assert sorted(set(used)) == sorted(_tasks(family)) and len(used) == 10, family
        assert {row["task"] for row in result.rows if row["family"] == family} <= set(_tasks(family))
    assert not any("cut ques" in p or "Retrieval tasks" in p or "**" in p for p in examples)
    card = (tmp_path / "on" / "dataset" / "README.md").read_text()
    assert "plain-text lists were accepted (4 of them)" in card

    # Without the flag the paper's strict parsing rejects every list: re-asked, then no example is planned.
    result, recorder = _text_list_run(fake_openai, tmp_path / "off", accept=False)
    report = result.report
    _invariant(report)
    assert report["rejected"] == {"no_valid_tasks": 40} and report["accepted"] == 0
    assert report["brainstorm"]["from_text_lists"] == 0 and report["brainstorm"]["reasked"] == 4 * 3
    assert recorder.prompts("example") == [] and len(recorder.prompts("brainstorm")) == 4 * 4
    rejects = [json.loads(line) for line in (tmp_path / "off" / "rejected.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in rejects if r["family"] == "long_long") == ["truncated"] * 4
    assert sorted(r["reason"] for r in rejects if r["family"] == "short_long") == ["invalid_json"] * 4


def test_system_prompt_reaches_every_request_and_changes_only_its_ids(fake_openai, tmp_path):
    recorder = Recorder()
    fake_openai.responder = recorder
    args = run_args(
        fake_openai,
        tmp_path / "out",
        num_examples=8,
        families=["short_long", "sts"],
        family_mix=json.dumps({"short_long": 1, "sts": 1}),
        temperature=0.0,
        system_prompt=SYSTEM,
        accept_text_task_lists=True,
    )
    report = generate(args).report
    assert report["complete"] and report["accepted"] > 0
    assert len(recorder.prompts("brainstorm")) == 1 and len(recorder.prompts("example")) == 8
    for body in recorder.bodies:
        assert body["messages"][0] == {"role": "system", "content": SYSTEM}
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert "system_prompt" not in body  # a message, never an unknown body field
    assert json.loads((tmp_path / "out" / "run_config.json").read_text())["system_prompt"] == SYSTEM
    assert f"System prompt: {json.dumps(SYSTEM)}" in (tmp_path / "out" / "dataset" / "README.md").read_text()

    plain = SynthesisArguments(model="fake-llm", output="o", temperature=0.0, max_tokens=512)
    with_system = SynthesisArguments(
        model="fake-llm", output="o", temperature=0.0, max_tokens=512, system_prompt=SYSTEM
    )
    assert brainstorm_request("short_long", 0, plain.generation_params()).request_id == BRAINSTORM_ID
    assert (
        example_request("short_long", "Retrieve recipes for a dish.", 1, SLOTS, plain.generation_params()).request_id
        == EXAMPLE_ID
    )
    brainstorm = brainstorm_request("short_long", 0, with_system.generation_params())
    example = example_request("short_long", "Retrieve recipes for a dish.", 1, SLOTS, with_system.generation_params())
    assert brainstorm.request_id != BRAINSTORM_ID and example.request_id != EXAMPLE_ID
    # the batch backend writes Request.body() lines: the same system message, no extra field
    assert (
        example.body()["messages"][0] == {"role": "system", "content": SYSTEM}
        and "system_prompt" not in example.body()
    )

    # The same output without the system prompt: its journal is not reused, every request is sent again.
    fake_openai.reset_stats()
    recorder.bodies.clear()
    args.system_prompt = None
    again = generate(args).report
    assert again["complete"] and fake_openai.stats.requests == 9
    assert all([m["role"] for m in body["messages"]] == ["user"] for body in recorder.bodies)
