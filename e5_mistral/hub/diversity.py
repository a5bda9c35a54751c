"""How diverse a synthetic set is: task reuse, lexical distinct-n, and the family/language mix.

The paper reports 500k examples over 150k unique tasks (about 0.3 tasks per example) across 93 languages;
``diversity_report`` gives the same numbers for a generated set, for the dataset card and run summary.
"""

from __future__ import annotations

from array import array
from collections import Counter
from typing import Iterable

from ..errors import E5MistralError
from ..families import FAMILY_SPECS, all_output_keys
from ..text import match_key


NGRAM_ORDERS = (1, 2, 3)
DISTINCT_TEXTS = 2_000  # texts per field that distinct-n is computed over (it falls as a set grows)
OUTPUT_KEYS = all_output_keys()


def tokens(text: str) -> list[str]:
    """Whitespace tokens after case-folding (the unit of distinct-n)."""
    return text.casefold().split()


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Unique n-grams divided by total n-grams, pooled over all ``texts`` (0.0 when there are none).

    Tokens are whitespace-separated after case-folding; n-grams never cross text boundaries, and a text
    with fewer than ``n`` tokens contributes none.
    """
    counter = DistinctN(limit=None)
    for text in texts:
        counter.add(text)
    return counter.report()[f"distinct_{n}"]


def query_text(row: dict) -> str | None:
    """The query-side text of a row: user_query, input_text, input or S1 by family."""
    spec = FAMILY_SPECS.get(row.get("family"))
    value = row.get(spec.dedup_key) if spec else None
    return value if isinstance(value, str) else None


class DistinctN:
    """distinct-1/2/3 of a stream of texts, over its first ``limit`` texts: distinct-n grows less as a set grows, so
    sets compare at the same size, and the n-grams kept stay bounded however many rows pass. Each n-gram is kept as
    its 8-byte hash in an array (a set of Python ints costs about 60 bytes an entry: 2,000 long documents a field
    held hundreds of MB) and counted unique when the report is made."""

    def __init__(self, limit: int | None):
        self.limit, self.texts = limit, 0
        self.grams = {n: array("q") for n in NGRAM_ORDERS}

    def add(self, text: str) -> None:
        if self.limit is not None and self.texts >= self.limit:
            return
        self.texts += 1
        words = tokens(text)
        for n in NGRAM_ORDERS:
            self.grams[n].extend(hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1))

    def report(self) -> dict[str, float]:
        import numpy as np

        counts = {n: (len(np.unique(np.frombuffer(g, dtype=np.int64))), len(g)) for n, g in self.grams.items()}
        return {f"distinct_{n}": unique / total if total else 0.0 for n, (unique, total) in counts.items()}


class DiversityTally:
    """:func:`diversity_report`, counted row by row (the dataset writer streams rows through it)."""

    def __init__(self, distinct_limit: int | None = DISTINCT_TEXTS):
        self.rows = 0
        self.families, self.languages = Counter(), Counter()
        self.per_family_language: dict[str, Counter] = {}
        self.tasks, self.examples = set(), set()  # hashes of the normalised texts
        self.queries = DistinctN(distinct_limit)
        self.per_field: dict[str, DistinctN] = {}
        self.distinct_limit = distinct_limit

    def add(self, row: dict) -> None:
        family = row.get("family")
        if family not in FAMILY_SPECS:
            raise E5MistralError(f"rows have unknown family {family!r}; expected one of {', '.join(FAMILY_SPECS)}")
        self.rows += 1
        self.families[family] += 1
        self.languages[row.get("language")] += 1
        self.per_family_language.setdefault(family, Counter())[row.get("language")] += 1
        if isinstance(row.get("task"), str):
            self.tasks.add(hash(match_key(row["task"])))
        if (text := query_text(row)) is not None:
            self.examples.add(hash((family, match_key(text))))
            self.queries.add(text)
        for key in OUTPUT_KEYS:
            if isinstance(row.get(key), str):
                self.per_field.setdefault(key, DistinctN(self.distinct_limit)).add(row[key])

    def report(self) -> dict:
        return {
            "examples": self.rows,
            "unique_tasks": len(self.tasks),
            "unique_examples": len(self.examples),
            "tasks_per_example": len(self.tasks) / self.rows if self.rows else 0.0,
            **self.queries.report(),
            "per_field": {key: self.per_field[key].report() for key in OUTPUT_KEYS if key in self.per_field},
            "per_family": _sorted(self.families),
            "per_language": _sorted(self.languages),
            "per_family_language": {f: _sorted(self.per_family_language[f]) for f in _sorted(self.families)},
        }


def diversity_report(rows: Iterable[dict], distinct_limit: int | None = DISTINCT_TEXTS) -> dict:
    """Counts and distinct-n of schema rows (see the row schema: ``family``, ``task``, ``language``, LLM keys).

    - ``examples``: number of rows.
    - ``unique_tasks``: distinct task strings after case-folding and whitespace collapsing.
    - ``unique_examples``: distinct (family, normalised query-side text) pairs; the query side is
      ``user_query`` / ``input_text`` / ``input`` / ``S1`` by family, the paper's exact-dedup key.
    - ``tasks_per_example``: ``unique_tasks / examples`` (0.0 for no rows; the paper's is 150k / 500k = 0.3).
    - ``distinct_1/2/3``: distinct-n over the query-side texts. distinct-n = number of unique n-grams /
      total number of n-grams, pooled over the first ``distinct_limit`` texts, with whitespace tokens after
      case-folding.
    - ``per_field``: ``{field: {"distinct_1": .., "distinct_2": .., "distinct_3": ..}}`` for every LLM output
      key present as a string in some row (its first ``distinct_limit`` values).
    - ``per_family``, ``per_language``: row counts; ``per_family_language``: ``{family: {language: count}}``.
    Count dictionaries are sorted by decreasing count, then name.
    """
    tally = DiversityTally(distinct_limit)
    for row in rows:
        tally.add(row)
    return tally.report()


def _sorted(counts: Counter) -> dict:
    return dict(sorted(counts.items(), key=lambda item: (-item[1], str(item[0]))))
