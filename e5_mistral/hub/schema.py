"""The row schema every stage reads and writes (one row = one example of a family), with its slot value sets.

Columns: ``request_id, family, task, language, slots{...}, template_version, generator_model`` and the LLM's
JSON keys of the family, all strings. The ``all`` config holds the union of keys (null where a key does not
apply to the row's family) and the union of slot keys.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Iterable

from ..errors import E5MistralError
from ..families import FAMILIES, FAMILY_SPECS, family_spec


ALL_CONFIG = "all"
CONFIG_NAMES = FAMILIES + (ALL_CONFIG,)
META_COLUMNS = ("request_id", "family", "task", "language")
TRAILING_META = ("template_version", "generator_model")
HUB_DIR = Path(__file__).parent  # slots.json, languages.json and the dataset card's template
LANGUAGE_SLOT = "languages"  # marker in slots.json: the slot draws from the language distribution


@functools.cache
def _slots() -> dict:
    data = json.loads((HUB_DIR / "slots.json").read_text(encoding="utf-8"))
    data.pop("_comment", None)
    return data


def slot_values(family: str) -> dict[str, list[str] | str]:
    """Slot name -> the paper's value set, or ``"languages"`` for language slots (the ``slots`` column's keys)."""
    return dict(_slots()[family_spec(family).name])


@functools.cache
def _languages() -> tuple[dict, ...]:
    return tuple(json.loads((HUB_DIR / "languages.json").read_text(encoding="utf-8"))["languages"])


def default_languages() -> dict[str, float]:
    """The 93 XLM-R language names with the default (Figure 2) weights."""
    return {entry["name"]: float(entry["weight"]) for entry in _languages()}


def language_codes() -> dict[str, str]:
    """Language name -> ISO code, for a dataset card's metadata."""
    return {entry["name"]: entry["code"] for entry in _languages()}


def _families(config: str) -> tuple[str, ...]:
    if config == ALL_CONFIG:
        return FAMILIES
    if config not in FAMILIES:
        raise E5MistralError(f"unknown config {config!r}; choose from {', '.join(CONFIG_NAMES)}")
    return (config,)


def _union(lists: Iterable[Iterable[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for names in lists:
        for name in names:
            seen.setdefault(name, None)
    return list(seen)


@functools.cache
def _keys(config: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(slot keys, output keys) of a config, worked out once: every row written is conformed with them."""
    families = _families(config)
    return tuple(_union(slot_values(f) for f in families)), tuple(_union(family_spec(f).output_keys for f in families))


def slot_keys(config: str) -> list[str]:
    return list(_keys(config)[0])


def output_keys(config: str) -> list[str]:
    return list(_keys(config)[1])


def columns(config: str) -> list[str]:
    return [*META_COLUMNS, "slots", *TRAILING_META, *_keys(config)[1]]


def features(config: str):
    """The ``datasets.Features`` of a config (all strings; ``slots`` a struct of strings)."""
    import datasets

    string = datasets.Value("string")
    spec = {name: string for name in META_COLUMNS}
    spec["slots"] = {key: string for key in slot_keys(config)}
    spec.update({name: string for name in TRAILING_META})
    spec.update({name: string for name in output_keys(config)})
    return datasets.Features(spec)


def conform(row: dict, config: str) -> dict:
    """``row`` with exactly the config's columns: missing keys (other families' fields) become None."""
    slots = row.get("slots") or {}
    slot_names, output_names = _keys(config)
    out = {name: row.get(name) for name in (*META_COLUMNS, "slots", *TRAILING_META, *output_names)}
    out["slots"] = {key: slots.get(key) for key in slot_names}
    return out


def check_row(row: dict, where: str) -> None:
    """Refuse, in one line naming ``where``, a row that is not one of a family's: a family name and the texts its
    training pair needs (query, positive, and the task of a brainstormed family). Metadata columns may be missing."""
    family = row.get("family")
    spec = FAMILY_SPECS.get(family) if isinstance(family, str) else None
    if spec is None:
        raise E5MistralError(f"{where}: field 'family' is {family!r}, expected one of {', '.join(FAMILIES)}")
    for key in (spec.query_key, spec.positive_key, *(("task",) if spec.brainstorms else ())):
        value = row.get(key)
        if not isinstance(value, str) or not value.strip():
            raise E5MistralError(f"{where}: a {family} row needs field {key!r}, a non-empty string (got {value!r})")
