"""The prompt templates, slot sets and languages are the paper's (Tables 8-13, Figure 2), pinned."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from e5_mistral.hub.schema import default_languages, slot_values
from e5_mistral.synthesis import templates
from e5_mistral.synthesis.templates import FAMILIES, placeholders, template_text


PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "paper.md"

# Transcribed from the captions of Tables 8-13 (query_length follows Table 8, not section 3.1's "5-10 words").
PAPER_SLOTS = {
    "short_long": {
        "query_type": ["extremely long-tail", "long-tail", "common"],
        "query_length": ["less than 5 words", "5 to 15 words", "at least 10 words"],
        "clarity": ["clear", "understandable with some effort", "ambiguous"],
        "num_words": ["50", "100", "200", "300", "400", "500"],
        "difficulty": ["high school", "college", "PhD"],
        "language": "languages",
    },
    "long_short": {
        "num_words": ["less than 10", "at least 10", "at least 50", "at least 100", "at least 200"],
        "clarity": ["clear", "understandable with some effort", "ambiguous"],
        "difficulty": ["high school", "college", "PhD"],
        "language": "languages",
    },
    "short_short": {"language": "languages"},
    "long_long": {"language": "languages"},
    "sts": {
        "unit": ["sentence", "phrase", "passage"],
        "high_score": ["4", "4.5", "5"],
        "low_score": ["2.5", "3", "3.5"],
        "difficulty": ["elementary school", "high school", "college"],
        "language": "languages",
    },
    "bitext": {
        "unit": ["sentence", "phrase", "passage"],
        "high_score": ["4", "4.5", "5"],
        "low_score": ["1.5", "2", "2.5"],
        "difficulty": ["elementary school", "high school", "college"],
        "src_lang": "languages",
        "tgt_lang": "languages",
    },
}

TEMPLATE_ORDER = [  # order of the fenced blocks in paper.md section 1.2
    ("short_long", "brainstorm"),
    ("short_long", "generate"),
    ("long_short", "brainstorm"),
    ("long_short", "generate"),
    ("short_short", "brainstorm"),
    ("short_short", "generate"),
    ("long_long", "brainstorm"),
    ("long_long", "generate"),
    ("sts", "generate"),
    ("bitext", "generate"),
]

# sha256 prefixes of the template texts, so a drift is caught even where ../shared is absent.
TEMPLATE_DIGESTS = {
    ("short_long", "brainstorm"): "933cd3c456b2f48e",
    ("short_long", "generate"): "2f5e9d0cfda3d64b",
    ("long_short", "brainstorm"): "28d7d2a98a44ed17",
    ("long_short", "generate"): "27a627ad1eeb7cca",
    ("short_short", "brainstorm"): "75c0c5f29a173eda",
    ("short_short", "generate"): "4a5be7012f4c26fa",
    ("long_long", "brainstorm"): "2ce0626ee94f80dc",
    ("long_long", "generate"): "c6254c407c91ff21",
    ("sts", "generate"): "87a1c6053e7bcc55",
    ("bitext", "generate"): "a26c79af2379ee06",
}


def _paper_blocks() -> list[str]:
    text = PAPER.read_text(encoding="utf-8")
    section = text[text.index("### 1.2 Templates") : text.index("### 1.3")]
    blocks = re.findall(r"```\n(.*?)\n```", section, flags=re.DOTALL)
    # The Table 8 brainstorm block comes first; the Figure 1 variant is only described in prose.
    return blocks


@pytest.mark.skipif(not PAPER.is_file(), reason="../shared/reference/paper.md is not present")
def test_templates_are_verbatim_from_the_paper():
    blocks = _paper_blocks()
    assert len(blocks) == len(TEMPLATE_ORDER)
    for (family, kind), block in zip(TEMPLATE_ORDER, blocks):
        assert template_text(family, kind) == block, f"{family} {kind} differs from the paper"


def test_template_texts_are_pinned():
    digests = {key: hashlib.sha256(template_text(*key).encode()).hexdigest()[:16] for key in TEMPLATE_ORDER}
    assert digests == TEMPLATE_DIGESTS


def test_slot_sets_are_the_papers():
    for family in FAMILIES:
        assert slot_values(family) == PAPER_SLOTS[family], family


def test_every_generation_placeholder_is_a_slot_or_the_task():
    for family in FAMILIES:
        names = set(placeholders(template_text(family, "generate")))
        expected = set(PAPER_SLOTS[family]) | ({"task"} if family not in templates.FIXED_TASKS else set())
        assert names == expected, family
        if family in templates.ASYMMETRIC_FAMILIES:
            assert placeholders(template_text(family, "brainstorm")) == []
    with pytest.raises(ValueError, match="no brainstorm template"):
        template_text("sts", "brainstorm")


def test_json_keys_named_in_templates():
    for family, keys in templates.OUTPUT_KEYS.items():
        text = template_text(family, "generate")
        for key in keys:
            assert f'"{key}"' in text, (family, key)


def test_languages_are_the_93_xlmr_names_with_figure_2_weights():
    weights = default_languages()
    assert len(weights) == 93
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-6)
    assert weights["English"] == 0.431 and weights["Polish"] == 0.030 and weights["Arabic"] == 0.027
    for name in ("Japanese", "Italian", "Russian", "Indonesian", "German", "Persian"):
        assert weights[name] == 0.029
    for name in ("Spanish", "Chinese", "French", "Portuguese", "Dutch"):
        assert weights[name] == 0.028
    others = [w for n, w in weights.items() if w < 0.027]
    assert len(others) == 79 and max(others) - min(others) < 1e-12
    assert sum(others) == pytest.approx(0.198, abs=1e-5)


def test_template_version_is_a_hash_of_the_text():
    version = templates.template_version("sts", "generate")
    assert version == hashlib.sha256(template_text("sts", "generate").encode()).hexdigest()[:12]
    assert len({templates.template_version(f, "generate") for f in FAMILIES}) == 6
