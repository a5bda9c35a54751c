"""The fake OpenAI responder answers every family in the shape the parser accepts, or as the test planned."""

from __future__ import annotations

from e5_mistral.synthesis.parsing import Rejected, parse_brainstorm, parse_example
from e5_mistral.synthesis.templates import template_text
from tests.helpers.synthesis_fakes import intended_outcome, responder


def test_responder_answers_every_family_validly():
    for family in ("short_long", "long_short", "short_short", "long_long"):
        body = {"messages": [{"role": "user", "content": template_text(family, "brainstorm")}]}
        assert len(parse_brainstorm(responder(body))) == 20
    prompts = {
        "short_long": "You have been assigned a retrieval task: T",
        "long_short": "You have been assigned a text classification task: T",
        "short_short": "- Both ... should be very short (a sentence or a phrase)",
        "long_long": "- Both ... should be long documents (at least 300 words)",
        "sts": "Write a sentence triple with varying semantic similarity scores",
        "bitext": "Write a sentence triple with one sentence in English and two in Uzbek",
    }
    for family, prompt in prompts.items():
        answer = responder({"messages": [{"role": "user", "content": prompt}]})
        outcome = intended_outcome(prompt)
        if outcome in ("ok", "duplicate"):
            parse_example(family, answer)
        else:
            try:
                parse_example(family, answer)
                raise AssertionError("expected a reject")
            except Rejected as err:
                assert err.reason == outcome
