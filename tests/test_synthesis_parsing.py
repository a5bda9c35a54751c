"""Parsing LLM answers: bounded repair, per-family validation with reason codes, never eval."""

from __future__ import annotations

import json

import pytest

from e5_mistral.synthesis.parsing import Rejected, parse_brainstorm, parse_brainstorm_answer, parse_example
from e5_mistral.text import match_key


SL = {
    "user_query": "how to bake bread",
    "positive_document": "Mix flour and water.",
    "hard_negative_document": "Bread is old.",
}


def _reason(family, content, finish_reason="stop"):
    with pytest.raises(Rejected) as info:
        parse_example(family, content, finish_reason)
    return info.value.reason


@pytest.mark.parametrize(
    "content",
    [
        json.dumps(SL),
        "```json\n" + json.dumps(SL, indent=2) + "\n```",
        "Sure! Here it is:\n" + json.dumps(SL) + "\nHope this helps {not json}",
        json.dumps(SL)[:-1] + ",}",  # trailing comma
        '{"user_query": "how to bake bread {x}", "positive_document": "Mix flour and water.", "hard_negative_document": "Bread is old.",}',
    ],
)
def test_repairs_recover_the_object(content):
    row = parse_example("short_long", content)
    assert row["positive_document"] == "Mix flour and water."
    assert set(row) == set(SL)


def test_values_are_stripped_strings():
    row = parse_example("sts", json.dumps({"S1": " a ", "S2": "b\n", "S3": "c"}))
    assert row == {"S1": "a", "S2": "b", "S3": "c"}


@pytest.mark.parametrize(
    "family,content,reason",
    [
        ("short_long", json.dumps(SL), "truncated"),
    ],
)
def test_truncated_answers_are_never_parsed(family, content, reason):
    assert _reason(family, content, finish_reason="length") == reason


@pytest.mark.parametrize(
    "family,content,reason",
    [
        ("short_long", "", "empty_response"),
        ("short_long", None, "empty_response"),
        ("short_long", 'Sure! Here is the JSON you asked for: {"user_query": "x', "invalid_json"),
        ("short_long", "__import__('os').system('echo pwned')", "invalid_json"),
        ("short_long", json.dumps([SL]), "not_an_object"),
        (
            "short_long",
            json.dumps({k: v for k, v in SL.items() if k != "hard_negative_document"}),
            "missing_key:hard_negative_document",
        ),
        ("short_long", json.dumps({**SL, "positive_document": "  "}), "empty_value:positive_document"),
        ("short_long", json.dumps({**SL, "positive_document": {"text": "x"}}), "nested_value:positive_document"),
        ("short_long", json.dumps({**SL, "positive_document": ["x"]}), "nested_value:positive_document"),
        ("short_long", json.dumps({**SL, "positive_document": 3}), "not_a_string:positive_document"),
        ("short_long", json.dumps({**SL, "explanation": "because"}), "extra_key:explanation"),
        ("short_long", json.dumps({**SL, "positive_document": "HOW to  bake bread"}), "query_equals_positive"),
        (
            "long_short",
            json.dumps({"input_text": "great film", "label": "Positive", "misleading_label": " positive"}),
            "label_equals_misleading",
        ),
        ("short_short", json.dumps({"input": "cat", "positive_document": "Cat"}), "query_equals_positive"),
        ("long_long", json.dumps({"input": "a b", "positive_document": "a  b"}), "query_equals_positive"),
        ("sts", json.dumps({"S1": "a", "S2": "b", "S3": "A"}), "sentences_not_distinct"),
        ("bitext", json.dumps({"S1": "a", "S2": "b", "S3": "b"}), "sentences_not_distinct"),
    ],
)
def test_reject_reason_codes(family, content, reason):
    assert _reason(family, content) == reason


def test_brainstorm_lists():
    assert parse_brainstorm(json.dumps(["Find X.", "find  x.", "Retrieve Y."])) == ["Find X.", "Retrieve Y."]
    # "a python list of strings" (single quotes) is read with ast.literal_eval, which runs no code
    assert parse_brainstorm("```python\n['Find X.', 'Retrieve Y.',]\n```") == ["Find X.", "Retrieve Y."]
    assert parse_brainstorm('Here you go:\n["A task.", "B task."]\nEnjoy!') == ["A task.", "B task."]
    # the structured-output shape, where a server needs a top-level object
    assert parse_brainstorm(json.dumps({"tasks": ["Find X.", "Retrieve Y."]})) == ["Find X.", "Retrieve Y."]


@pytest.mark.parametrize(
    "content,reason",
    [
        ("1. Find X\n2. Retrieve Y", "invalid_json"),
        (json.dumps({"items": ["a"]}), "brainstorm_not_a_list_of_strings"),
        (json.dumps({"tasks": ["a"], "more": ["b"]}), "brainstorm_not_a_list_of_strings"),
        (json.dumps({"tasks": "a"}), "brainstorm_not_a_list_of_strings"),
        (json.dumps([]), "brainstorm_not_a_list_of_strings"),
        (json.dumps(["a", 2]), "brainstorm_not_a_list_of_strings"),
        (json.dumps(["a", ""]), "brainstorm_not_a_list_of_strings"),
        ("[__import__('os').getcwd()]", "invalid_json"),
    ],
)
def test_brainstorm_rejects(content, reason):
    with pytest.raises(Rejected) as info:
        parse_brainstorm(content)
    assert info.value.reason == reason
    with pytest.raises(Rejected, match="truncated"):
        parse_brainstorm(json.dumps(["a"]), finish_reason="length")


def test_normalize_folds_case_and_whitespace():
    assert match_key("  Hello\n  WORLD\t") == "hello world"


# Greedy SmolLM2-135M-Instruct brainstorm answers (shortened), as measured with a JSON-only system message.
NUMBERED = (
    "Here's a list of potential retrieval tasks that can be used to test the model:\n\n"
    "1. Retrieve weather information for a specific city.\n"
    "2. Search for documents that answer a specific FAQ-style question on children's nutrition.\n"
    "3. Find `legal` documents about __tenant__ rights.\n"
)
BOLD_CUT = (
    "Here's a list of potential text classification tasks:\n\n"
    "1. **Sentiment Analysis**: This task involves analyzing the tone, sentiment, or emotions conveyed by a text.\n"
    "2. **Text Classification**: Assign a news article to one of a fixed set of topics.\n"
    "3. **Text Preproc"
)
DASHED_CUT = (
    "Here's a list of tasks:\n\n"
    "- Given a scientific paper title, retrieve the title of papers that cite the given paper.\n"
    "- Match a word with its definition.\n"
    "- Provide a notable person's name, identify the works they are known for.\n"
    "- Provide a no"
)
HEADINGS = "Task: \n- Text Preprocessing: \n- Text Preprocessing: \n- Text Preprocessing: \n"
TEXT_LISTS = [
    (
        NUMBERED,
        "stop",
        "invalid_json",
        [
            "Retrieve weather information for a specific city.",
            "Search for documents that answer a specific FAQ-style question on children's nutrition.",
            "Find legal documents about tenant rights.",
        ],
    ),
    (
        BOLD_CUT,
        "length",
        "truncated",
        [
            "Sentiment Analysis: This task involves analyzing the tone, sentiment, or emotions conveyed by a text.",
            "Text Classification: Assign a news article to one of a fixed set of topics.",
        ],
    ),
    (
        DASHED_CUT,
        "length",
        "truncated",
        [
            "Given a scientific paper title, retrieve the title of papers that cite the given paper.",
            "Match a word with its definition.",
            "Provide a notable person's name, identify the works they are known for.",
        ],
    ),
]


@pytest.mark.parametrize("content,finish_reason,strict_reason,tasks", TEXT_LISTS)
def test_text_task_lists_are_accepted_only_when_asked(content, finish_reason, strict_reason, tasks):
    with pytest.raises(Rejected) as info:
        parse_brainstorm(content, finish_reason)
    assert info.value.reason == strict_reason  # the paper's strict parsing stays the default
    assert parse_brainstorm(content, finish_reason, accept_text_lists=True) == tasks
    assert parse_brainstorm_answer(content, finish_reason, accept_text_lists=True) == (tasks, True)


def test_text_list_item_markers_headings_and_duplicates():
    text = (
        "Tasks:\n* Find articles about a given disease.\n• Retrieve product reviews for a phone.\n"
        "1) Match questions to forum answers.\n- find  ARTICLES about a given disease.\n- Short item\n"
        "- Summaries:\nNot an item line with many words in it.\n12. Locate court rulings citing a statute."
    )
    assert parse_brainstorm(text, accept_text_lists=True) == [
        "Find articles about a given disease.",
        "Retrieve product reviews for a phone.",
        "Match questions to forum answers.",
        "Locate court rulings citing a statute.",
    ]


def test_cut_text_list_keeps_a_last_item_that_ended_with_a_newline():
    answer = "- Retrieve weather information for a city.\n- Find papers that cite a paper.\n"
    assert parse_brainstorm(answer, "length", accept_text_lists=True) == [
        "Retrieve weather information for a city.",
        "Find papers that cite a paper.",
    ]


@pytest.mark.parametrize(
    "content,finish_reason,reason",
    [
        (HEADINGS, "stop", "invalid_json"),  # headings only: nothing to use
        (HEADINGS, "length", "truncated"),
        ("- Retrieve weather information for a city.", "length", "truncated"),  # the only item may be cut
        (
            json.dumps(["Find X in a corpus.", "Retrieve Y for a query."])[:-3],
            "length",
            "truncated",
        ),  # a cut JSON list
        ('["- Retrieve weather information\n- for a city', "stop", "invalid_json"),  # a broken JSON list is not text
        ("", "stop", "empty_response"),
        (json.dumps({"items": ["a"]}), "stop", "brainstorm_not_a_list_of_strings"),
    ],
)
def test_text_list_mode_still_rejects(content, finish_reason, reason):
    with pytest.raises(Rejected) as info:
        parse_brainstorm(content, finish_reason, accept_text_lists=True)
    assert info.value.reason == reason


def test_json_lists_are_not_counted_as_text_lists():
    assert parse_brainstorm_answer(json.dumps(["A task here."]), accept_text_lists=True) == (["A task here."], False)
