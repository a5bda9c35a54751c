"""The paper's prompt templates (Tables 8-13), loaded from data files (the slot value sets and languages: hub.schema).

The texts live in ``templates/*.txt`` verbatim, with the paper's ``{slot}`` placeholders; a template's
version is a hash of its text, so editing a template gives new request ids instead of silently reusing
answers generated from the old text.
"""

from __future__ import annotations

import hashlib
import string
from functools import lru_cache
from pathlib import Path

from ..errors import E5MistralError
from ..families import ASYMMETRIC_FAMILIES, FAMILIES, FAMILY_SPECS, SYMMETRIC_FAMILIES, family_spec  # noqa: F401


TEMPLATE_DIR = Path(__file__).parent / "templates"

# Views of the family definitions (e5_mistral/families.py), for the code that reads them by family name.
FIXED_TASKS = {name: spec.fixed_task for name, spec in FAMILY_SPECS.items() if spec.fixed_task}
OUTPUT_KEYS: dict[str, tuple[str, ...]] = {name: spec.output_keys for name, spec in FAMILY_SPECS.items()}
DEDUP_KEY = {name: spec.dedup_key for name, spec in FAMILY_SPECS.items()}


def check_family(family: str) -> str:
    return family_spec(family).name


@lru_cache(maxsize=None)
def template_text(family: str, kind: str) -> str:
    """The template of ``family`` for ``kind`` ("brainstorm" or "generate")."""
    path = TEMPLATE_DIR / f"{check_family(family)}_{kind}.txt"
    if not path.is_file():
        raise E5MistralError(f"family {family!r} has no {kind} template (symmetric families skip brainstorming)")
    return path.read_text(encoding="utf-8").removesuffix("\n")


def template_version(family: str, kind: str) -> str:
    return hashlib.sha256(template_text(family, kind).encode("utf-8")).hexdigest()[:12]


def placeholders(text: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(text) if name]


def render(family: str, kind: str, values: dict[str, str]) -> str:
    """Fill a template; every placeholder must have a value and no value may be left unused."""
    text = template_text(family, kind)
    needed = set(placeholders(text))
    missing, unused = needed - values.keys(), values.keys() - needed
    if missing or unused:
        raise E5MistralError(f"{family} {kind} template: missing slots {sorted(missing)}, unused {sorted(unused)}")
    return text.format_map(values)
