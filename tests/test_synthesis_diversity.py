"""The diversity report on hand-made schema rows, against hand-computed numbers."""

from __future__ import annotations

import pytest

from e5_mistral.hub.diversity import distinct_n, diversity_report


def row(family, task, language, **fields):
    return {"request_id": f"id-{len(fields)}", "family": family, "task": task, "language": language, **fields}


ROWS = [
    row(
        "short_long",
        "Find recipes",
        "English",
        user_query="the cat sat",
        positive_document="a b",
        hard_negative_document="c",
        S1=None,
    ),  # an `all`-config row: keys of other families are null
    row(
        "short_long",
        "find  Recipes",
        "English",
        user_query="The cat ran",
        positive_document="a b c",
        hard_negative_document="d",
    ),
    row("sts", "Retrieve semantically similar text.", "Polish", S1="the cat sat", S2="x", S3="y"),
    row(
        "long_short",
        "Classify reviews",
        "English",
        input_text="dog dog dog",
        label="positive",
        misleading_label="negative",
    ),
    row(
        "short_long",
        "Find recipes",
        "German",
        user_query="THE  cat sat",
        positive_document="e",
        hard_negative_document="f",
    ),
]


def test_distinct_n_definition():
    # unigrams: a b a | b  -> 4 total, 2 unique; bigrams: (a b) (b a) -> 2 total, 2 unique; "b" has none
    assert distinct_n(["a B a", "b"], 1) == 0.5
    assert distinct_n(["a B a", "b"], 2) == 1.0
    assert distinct_n(["a B a", "b"], 3) == 1.0
    assert distinct_n(["b"], 2) == 0.0
    assert distinct_n([], 1) == 0.0


def test_report_numbers():
    report = diversity_report(ROWS)
    assert report["examples"] == 5
    assert report["unique_tasks"] == 3  # "Find recipes" == "find  Recipes" after case/space folding
    assert report["tasks_per_example"] == pytest.approx(3 / 5)
    # query side: the cat sat | the cat ran | the cat sat (sts) | dog dog dog | the cat sat
    assert report["unique_examples"] == 4  # the sts "the cat sat" differs from short_long's by family
    assert report["distinct_1"] == pytest.approx(5 / 15)  # the cat sat ran dog
    assert report["distinct_2"] == pytest.approx(4 / 10)  # the-cat cat-sat cat-ran dog-dog
    assert report["distinct_3"] == pytest.approx(3 / 5)
    assert report["per_field"]["user_query"] == pytest.approx(
        {"distinct_1": 4 / 9, "distinct_2": 3 / 6, "distinct_3": 2 / 3}
    )
    assert report["per_field"]["label"] == {"distinct_1": 1.0, "distinct_2": 0.0, "distinct_3": 0.0}
    assert report["per_field"]["positive_document"]["distinct_1"] == pytest.approx(4 / 6)  # a b | a b c | e
    assert "input" not in report["per_field"]  # no row has it
    assert list(report["per_family"].items()) == [("short_long", 3), ("long_short", 1), ("sts", 1)]
    assert list(report["per_language"].items()) == [("English", 3), ("German", 1), ("Polish", 1)]
    assert report["per_family_language"] == {
        "short_long": {"English": 2, "German": 1},
        "long_short": {"English": 1},
        "sts": {"Polish": 1},
    }


def test_empty_and_bad_rows():
    empty = diversity_report([])
    assert empty["examples"] == 0 and empty["tasks_per_example"] == 0.0 and empty["distinct_1"] == 0.0
    with pytest.raises(ValueError, match="unknown family 'retrieval'"):
        diversity_report([row("retrieval", "t", "English")])


def test_the_tally_of_long_documents_keeps_8_bytes_an_ngram():
    """distinct-n over 2,000 texts a field is bounded, and small: at generate's defaults the long-document fields
    dominated a run's memory (a set of Python ints costs about 60 bytes an n-gram)."""
    import random
    import tracemalloc

    from e5_mistral.hub.diversity import DiversityTally

    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(5000)]
    rows = [
        {"family": "long_long", "task": f"t{i}", "language": "English", "input": " ".join(rng.choices(vocabulary, k=200)),
         "positive_document": " ".join(rng.choices(vocabulary, k=200))}
        for i in range(500)
    ]  # fmt: skip
    tracemalloc.start()
    tally = DiversityTally()
    for row in rows:
        tally.add(row)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    ngrams = 3 * 2 * 2 * 500 * 199  # orders x (queries + each field) x rows x n-grams a text, about
    assert held < 12 * ngrams, held  # 8 bytes an n-gram and the arrays' slack
    assert 0.9 < tally.report()["per_field"]["input"]["distinct_3"] <= 1.0
