"""The plan is deterministic, private-RNG, and follows the paper's mix and language weights."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from e5_mistral.synthesis import plan
from e5_mistral.synthesis.config import SynthesisArguments
from e5_mistral.synthesis.runner import SynthesisRun


TASKS = [f"Retrieve documents of kind {i}." for i in range(30)]


def _examples(seed, family="short_long", n=50, languages=None, model="m"):
    langs = plan.resolve_languages(languages)
    out = []
    tasks = plan.assign_tasks(family, TASKS, n, seed)
    for task, use in zip(tasks, plan.task_uses(tasks)):
        slots = plan.sample_slots(family, seed, task, use, langs)
        out.append(plan.example_request(family, task, use, slots, {"model": model, "temperature": 1.0}, seed))
    return out


def test_same_seed_same_plan_and_no_global_rng():
    random.seed(0)
    state = random.getstate()
    first = _examples(7)
    assert random.getstate() == state  # the global generator is never touched
    random.seed(12345)  # ...nor consulted
    assert [r.request_id for r in _examples(7)] == [r.request_id for r in first]
    assert [r.messages for r in _examples(7)] == [r.messages for r in first]
    other = _examples(8)
    assert [r.request_id for r in other] != [r.request_id for r in first]
    assert len({r.request_id for r in first}) == len(first)  # ids unique even if two rows sample the same slots


def test_ids_depend_on_model_and_params():
    assert _examples(7, model="a")[0].request_id != _examples(7, model="b")[0].request_id


def test_family_counts_follow_the_paper_mix_and_sum_exactly():
    counts = plan.family_counts(507_000, plan.resolve_mix(None, None))
    assert counts == {
        "short_long": 167_000,
        "long_short": 122_000,
        "sts": 99_000,
        "bitext": 89_000,
        "long_long": 17_000,
        "short_short": 13_000,
    }
    for n in (0, 1, 7, 101):
        assert sum(plan.family_counts(n, plan.resolve_mix(None, None)).values()) == n
    assert plan.family_counts(10, plan.resolve_mix(["sts", "bitext"], None)) == {"sts": 5, "bitext": 5}
    assert plan.family_counts(10, plan.resolve_mix(None, '{"sts": 3, "bitext": 1}')) == {"sts": 8, "bitext": 2}
    with pytest.raises(ValueError, match="unknown family"):
        plan.resolve_mix(["short-long"], None)


def test_brainstorm_calls_give_each_task_a_few_uses():
    assert plan.brainstorm_calls(0) == 0
    assert plan.brainstorm_calls(1) == 1
    assert plan.brainstorm_calls(167_000) == 2784  # ~20 tasks x 3 uses per call


def test_language_specs():
    assert plan.resolve_languages("french") == {"French": 1.0}
    assert plan.resolve_languages(["English", "Polish"]) == {"English": 0.5, "Polish": 0.5}
    assert plan.resolve_languages('{"English": 3, "German": 1}') == {"English": 0.75, "German": 0.25}
    assert plan.resolve_languages(['{"English": 1}']) == {"English": 1.0}
    with pytest.raises(ValueError, match="unknown language 'Klingon'"):
        plan.resolve_languages(["English", "Klingon"])


def test_default_language_distribution_reproduces_figure_2():
    langs = plan.resolve_languages(None)
    counts = Counter(plan.sample_slots("sts", 1, "", i, langs)["language"] for i in range(20_000))
    assert counts["English"] / 20_000 == pytest.approx(0.431, abs=0.015)
    assert counts["Polish"] / 20_000 == pytest.approx(0.030, abs=0.006)
    assert len(counts) > 80


def test_bitext_source_differs_from_target():
    langs = plan.resolve_languages(["English", "Uzbek"])
    for i in range(300):
        slots = plan.sample_slots("bitext", 3, "", i, langs)
        assert slots["src_lang"] != slots["tgt_lang"]
    with pytest.raises(ValueError, match="at least two languages"):
        SynthesisRun(SynthesisArguments(model="m", output="x", families=["bitext"], languages=["English"]))


def test_slots_are_strings_from_the_value_sets():
    slots = plan.sample_slots("short_long", 1, "t", 0, plan.resolve_languages(None))
    assert set(slots) == {"query_type", "query_length", "clarity", "num_words", "difficulty", "language"}
    assert all(isinstance(v, str) for v in slots.values())
    seen = Counter(plan.sample_slots("long_short", 1, "t", i, {"English": 1.0})["num_words"] for i in range(500))
    assert set(seen) == {"less than 10", "at least 10", "at least 50", "at least 100", "at least 200"}


def test_tasks_are_used_round_robin():
    tasks = plan.assign_tasks("short_long", TASKS, 90, seed=1)
    assert Counter(tasks) == {t: 3 for t in TASKS}
    assert plan.assign_tasks("sts", [], 2, seed=1) == ["Retrieve semantically similar text."] * 2
    assert plan.assign_tasks("bitext", [], 1, seed=1) == ["Retrieve parallel sentences."]
