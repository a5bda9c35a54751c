"""--help of generate, mine and evaluate: grouped options, what a first run needs on top, one default each."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from e5_mistral.compat import DefaultOnceHelpFormatter, move_to_group
from e5_mistral.evaluation.cli import EvaluateArguments
from e5_mistral.evaluation.cli import main as evaluate_main
from e5_mistral.mining.cli import main as mine_main
from e5_mistral.mining.hard_negatives import MiningArguments
from e5_mistral.mining.judge import JudgeArguments
from e5_mistral.synthesis.cli import main as generate_main
from e5_mistral.synthesis.config import SynthesisArguments


def _help(main, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _options(text: str) -> list[str]:
    """The help's option entries: each starts at two spaces and '--'."""
    return re.split(r"\n(?=  --)", text.split("\noptions:", 1)[1])


@pytest.mark.parametrize("dtype", [SynthesisArguments, MiningArguments, JudgeArguments, EvaluateArguments])
def test_every_option_is_in_exactly_one_group(dtype):
    grouped = [name for names in dtype.HELP_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in dataclasses.fields(dtype))


def test_generate_help_is_grouped_with_a_first_run_on_top(capsys):
    text = _help(generate_main, capsys)
    titles = re.findall(r"^(\S[^:\n]*):$", text[text.index("\noptions:") :], flags=re.M)
    assert titles == [
        "options",
        "endpoint",
        "what to generate",
        "sampling",
        "limits and budget",
        "output and Hub",
        "batch",
    ]
    order = [text.index(f"  --{flag} ") for flag in ("model", "base_url", "output", "num_examples", "temperature")]
    assert order == sorted(order)
    assert text.index("  --max_cost ") > text.index("limits and budget:") > text.index("  --temperature ")


@pytest.mark.parametrize("main", [generate_main, mine_main, evaluate_main])
def test_each_option_shows_one_default(main, capsys):
    entries = _options(_help(main, capsys))
    assert len(entries) > 8
    for entry in entries:
        assert entry.count("(default") <= 1, entry
        assert "(default: None)" not in entry and "(default: False)" not in entry, entry
    joined = " ".join(" ".join(e.split()) for e in entries)
    assert "--concurrency CONCURRENCY requests in flight at once (default: 16)" in joined or main is not generate_main
    if main is generate_main:
        base_url = next(e for e in entries if e.startswith("  --base_url"))
        assert " ".join(base_url.split()).endswith("(default: the OpenAI API)")


def test_mine_and_evaluate_help_are_grouped(capsys):
    mine = _help(mine_main, capsys)
    assert [t for t in ("input and output:", "teacher:", "which negatives:", "LLM judge:") if t in mine] == [
        "input and output:",
        "teacher:",
        "which negatives:",
        "LLM judge:",
    ]
    assert mine.index("  --judge_max_tokens ") > mine.index("LLM judge:")
    assert (
        "(default: 64)" in mine.split("  --judge_max_tokens ", 1)[1].split("\n  --", 1)[0]
    )  # the judge's own default
    evaluate = _help(evaluate_main, capsys)
    assert evaluate.index("what to evaluate:") < evaluate.index("quick runs:") < evaluate.index("encoding:")


def test_compat_help_shims():
    """The argparse internals compat.py relies on: a formatter hook and the groups' action lists."""
    parser = argparse.ArgumentParser(prog="x", formatter_class=DefaultOnceHelpFormatter)
    shown = parser.add_argument("--size", default=3, help="a size")
    parser.add_argument("--named", default=4, help="a count (default: four)")
    parser.add_argument("--unset", default=None, help="nothing")
    group = parser.add_argument_group("moved")
    move_to_group(parser, shown, group)
    text = " ".join(parser.format_help().split())
    assert "moved: --size SIZE a size (default: 3)" in text
    assert "a count (default: four)" in text and "(default: 4)" not in text and "(default: None)" not in text
    assert parser.parse_args(["--size", "5"]).size == "5"  # parsing is untouched
