"""A scripted LLM for the synthesis tests (answers every family's prompt) and checks of its contract.

Answers are a pure function of the prompt, so two runs with the same seed get the same answers. Some are
deliberately bad, by prompt hash, so reject codes and dedup can be asserted exactly.
"""

from __future__ import annotations

import hashlib
import json

from e5_mistral.synthesis.config import SynthesisArguments
from e5_mistral.synthesis.templates import template_text


def _family(prompt: str) -> str:
    for family in ("short_long", "long_short", "short_short", "long_long"):
        if prompt == template_text(family, "brainstorm"):
            return family + ":brainstorm"
    if "assigned a retrieval task" in prompt:
        return "short_long"
    if "assigned a text classification task" in prompt:
        return "long_short"
    if "should be very short" in prompt:
        return "short_short"
    if "should be long documents" in prompt:
        return "long_long"
    return "sts" if "semantic similarity" in prompt else "bitext"


def prompt_of(body: dict) -> str:
    return body["messages"][0]["content"]


def intended_outcome(prompt: str) -> str:
    """What the responder means to produce for this prompt: "ok", "duplicate" or a reject reason code."""
    family = _family(prompt)
    h = hashlib.sha256(prompt.encode()).hexdigest()
    if family.endswith(":brainstorm"):
        return "ok"
    if family == "short_long" and h[0] in "01":
        return "duplicate"
    if family == "long_short" and h[0] == "f":
        return "label_equals_misleading"
    if family in ("sts", "bitext") and h[0] == "e":
        return "sentences_not_distinct"
    return "ok"


def responder(body: dict) -> str:
    prompt = prompt_of(body)
    family = _family(prompt)
    h = hashlib.sha256(prompt.encode()).hexdigest()[:12]
    outcome = intended_outcome(prompt)
    if family.endswith(":brainstorm"):
        name = family.split(":")[0]
        return json.dumps([f"Given a {name} query of kind {i}, retrieve matching texts." for i in range(20)])
    if family == "short_long":
        query = "What is the weather in Paris" if outcome == "duplicate" else f"query {h}"
        return json.dumps(
            {"user_query": query, "positive_document": f"relevant {h}", "hard_negative_document": f"negative {h}"}
        )
    if family == "long_short":
        misleading = "label a" if outcome == "label_equals_misleading" else "label b"
        return (
            "```json\n"
            + json.dumps({"input_text": f"text {h}", "label": "label a", "misleading_label": misleading})
            + "\n```"
        )
    if family in ("short_short", "long_long"):
        return json.dumps({"input": f"input {h}", "positive_document": f"document {h}"})
    s3 = f"one {h}" if outcome == "sentences_not_distinct" else f"three {h}"
    return json.dumps({"S1": f"one {h}", "S2": f"two {h}", "S3": s3})


def run_args(server, output, **overrides) -> SynthesisArguments:
    """Settings for a fast run against the fake server (tiny backoff, 1 s timeout).

    No structured outputs by default: these runs count the plan's requests exactly, and the format probe has tests
    of its own (tests/test_synthesis_structured.py)."""
    settings = dict(
        model="fake-llm",
        base_url=server.base_url,
        output=str(output),
        num_examples=120,
        seed=3,
        languages=["English", "German", "Uzbek"],
        timeout=1.0,
        retry_initial_wait=0.01,
        retry_max_wait=0.05,
        concurrency=8,
        max_attempts=10,
        no_progress=True,
        response_format="none",
    )
    settings.update(overrides)
    return SynthesisArguments(**settings)
