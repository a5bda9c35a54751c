"""How diverse a synthetic set is: task reuse, lexical distinct-n, and the family/language mix.

The paper reports 500k examples over 150k unique tasks (about 0.3 tasks per example) across 93 languages;
``diversity_report`` gives the same numbers for a generated set, for the dataset card and run summary.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

from ..errors import E5MistralError
from ..families import all_output_keys
from ..text import match_key
from .templates import DEDUP_KEY


NGRAM_ORDERS = (1, 2, 3)


def tokens(text: str) -> list[str]:
    """Whitespace tokens after case-folding (the unit of distinct-n)."""
    return text.casefold().split()


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Unique n-grams divided by total n-grams, pooled over all ``texts`` (0.0 when there are none).

    Tokens are whitespace-separated after case-folding; n-grams never cross text boundaries, and a text
    with fewer than ``n`` tokens contributes none.
    """
    counts: Counter = Counter()
    for text in texts:
        words = tokens(text)
        counts.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def query_text(row: dict) -> str | None:
    """The query-side text of a row: user_query, input_text, input or S1 by family."""
    key = DEDUP_KEY.get(row.get("family"))
    value = row.get(key) if key else None
    return value if isinstance(value, str) else None


def _distinct(texts: Sequence[str]) -> dict[str, float]:
    return {f"distinct_{n}": distinct_n(texts, n) for n in NGRAM_ORDERS}


def diversity_report(rows: list[dict]) -> dict:
    """Counts and distinct-n of schema rows (see the row schema: ``family``, ``task``, ``language``, LLM keys).

    - ``examples``: number of rows.
    - ``unique_tasks``: distinct task strings after case-folding and whitespace collapsing.
    - ``unique_examples``: distinct (family, normalised query-side text) pairs; the query side is
      ``user_query`` / ``input_text`` / ``input`` / ``S1`` by family, the paper's exact-dedup key.
    - ``tasks_per_example``: ``unique_tasks / examples`` (0.0 for no rows; the paper's is 150k / 500k = 0.3).
    - ``distinct_1/2/3``: distinct-n over the query-side texts. distinct-n = number of unique n-grams /
      total number of n-grams, pooled over all texts, with whitespace tokens after case-folding.
    - ``per_field``: ``{field: {"distinct_1": .., "distinct_2": .., "distinct_3": ..}}`` for every LLM output
      key present as a string in some row.
    - ``per_family``, ``per_language``: row counts; ``per_family_language``: ``{family: {language: count}}``.
    Count dictionaries are sorted by decreasing count, then name.
    """
    families = Counter(row.get("family") for row in rows)
    unknown = [name for name in families if name not in DEDUP_KEY]
    if unknown:
        raise E5MistralError(f"rows have unknown family {unknown[0]!r}; expected one of {', '.join(DEDUP_KEY)}")
    queries = [(row["family"], text) for row in rows if (text := query_text(row)) is not None]
    fields = all_output_keys()
    per_field = {}
    for key in fields:
        values = [row[key] for row in rows if isinstance(row.get(key), str)]
        if values:
            per_field[key] = _distinct(values)
    per_family_language: dict[str, Counter] = {}
    for row in rows:
        per_family_language.setdefault(row["family"], Counter())[row.get("language")] += 1
    unique_tasks = len({match_key(row["task"]) for row in rows if isinstance(row.get("task"), str)})
    return {
        "examples": len(rows),
        "unique_tasks": unique_tasks,
        "unique_examples": len({(family, match_key(text)) for family, text in queries}),
        "tasks_per_example": unique_tasks / len(rows) if rows else 0.0,
        **_distinct([text for _, text in queries]),
        "per_field": per_field,
        "per_family": _sorted(families),
        "per_language": _sorted(Counter(row.get("language") for row in rows)),
        "per_family_language": {family: _sorted(per_family_language[family]) for family in _sorted(families)},
    }


def _sorted(counts: Counter) -> dict:
    return dict(sorted(counts.items(), key=lambda item: (-item[1], str(item[0]))))
