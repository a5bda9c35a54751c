"""The six synthetic task families of the paper (§3.1, Tables 8-13, §1.3 of its appendix), defined once.

Everything that knows a family's keys derives them from :data:`FAMILY_SPECS`: the generation templates' key
check, the parser's rules, the JSON schemas sent for structured outputs, the dataset features, training's
(query, positive, negative) mapping, decontamination, the quickstart's held-out tasks and the test fixtures.
Adding a family or a key is a change to this file (plus its template text).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from .errors import E5MistralError
from .instructions import BITEXT_TASK, STS_TASK


@dataclass(frozen=True)
class FamilySpec:
    """One family: the JSON keys its template asks for and how a row of it trains.

    ``distinct`` lists key pairs whose texts must differ (else the row is rejected with the given reason);
    ``all_distinct`` keys must all differ from each other. ``fixed_task`` is set for the symmetric families,
    which skip brainstorming (paper Table 16).
    """

    name: str
    description: str
    output_keys: tuple[str, ...]
    query_key: str
    positive_key: str
    negative_key: str | None = None
    fixed_task: str | None = None
    distinct: tuple[tuple[str, str, str], ...] = ()
    all_distinct: tuple[str, ...] = ()

    def __post_init__(self):
        used = [
            self.query_key,
            self.positive_key,
            *([self.negative_key] if self.negative_key else []),
            *(k for a, b, _ in self.distinct for k in (a, b)),
            *self.all_distinct,
        ]
        unknown = [key for key in used if key not in self.output_keys]
        if unknown:
            raise E5MistralError(
                f"family {self.name}: keys {unknown} are not among its output keys {self.output_keys}"
            )

    @property
    def brainstorms(self) -> bool:
        """Whether tasks are brainstormed first (the asymmetric families) or fixed."""
        return self.fixed_task is None

    @property
    def dedup_key(self) -> str:
        """The field whose normalised text identifies an example for exact dedup: the query side."""
        return self.query_key

    @property
    def fields(self) -> tuple[str, str, str | None]:
        """(query, positive, hard negative or None) keys, the paper's mapping to training triples."""
        return self.query_key, self.positive_key, self.negative_key


_QUERY_IS_POSITIVE = "query_equals_positive"

FAMILY_SPECS: MappingProxyType[str, FamilySpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            FamilySpec(
                "short_long",
                "short query, long document (retrieval)",
                ("user_query", "positive_document", "hard_negative_document"),
                "user_query",
                "positive_document",
                "hard_negative_document",
                distinct=(("user_query", "positive_document", _QUERY_IS_POSITIVE),),
            ),
            FamilySpec(
                "long_short",
                "long text, short label (classification)",
                ("input_text", "label", "misleading_label"),
                "input_text",
                "label",
                "misleading_label",
                distinct=(
                    ("label", "misleading_label", "label_equals_misleading"),
                    ("input_text", "label", _QUERY_IS_POSITIVE),
                ),
            ),
            FamilySpec(
                "short_short",
                "short query, short target",
                ("input", "positive_document"),
                "input",
                "positive_document",
                distinct=(("input", "positive_document", _QUERY_IS_POSITIVE),),
            ),
            FamilySpec(
                "long_long",
                "long query, long target",
                ("input", "positive_document"),
                "input",
                "positive_document",
                distinct=(("input", "positive_document", _QUERY_IS_POSITIVE),),
            ),
            FamilySpec(
                "sts",
                "semantic textual similarity (monolingual)",
                ("S1", "S2", "S3"),
                "S1",
                "S2",
                "S3",
                fixed_task=STS_TASK,
                all_distinct=("S1", "S2", "S3"),
            ),
            FamilySpec(
                "bitext",
                "bitext retrieval (translation pairs)",
                ("S1", "S2", "S3"),
                "S1",
                "S2",
                "S3",
                fixed_task=BITEXT_TASK,
                all_distinct=("S1", "S2", "S3"),
            ),
        )
    }
)

FAMILIES: tuple[str, ...] = tuple(FAMILY_SPECS)
ASYMMETRIC_FAMILIES: tuple[str, ...] = tuple(name for name, spec in FAMILY_SPECS.items() if spec.brainstorms)
SYMMETRIC_FAMILIES: tuple[str, ...] = tuple(name for name, spec in FAMILY_SPECS.items() if not spec.brainstorms)


def family_spec(name: str) -> FamilySpec:
    spec = FAMILY_SPECS.get(name)
    if spec is None:
        raise E5MistralError(f"unknown family {name!r}; choose from {', '.join(FAMILIES)}")
    return spec


def all_output_keys() -> list[str]:
    """Every family's output keys, in family order without repeats (the ``all`` config's text columns)."""
    return list(dict.fromkeys(key for spec in FAMILY_SPECS.values() for key in spec.output_keys))
