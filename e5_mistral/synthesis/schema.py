"""The row schema shared by synthesis, the bundled sample data and training (one row = one accepted example).

Columns: ``request_id, family, task, language, slots{...}, template_version, generator_model`` and the LLM's
JSON keys of the family, all strings. The ``all`` config holds the union of keys (null where a key does not
apply to the row's family) and the union of slot keys.
"""

from __future__ import annotations

import functools
from typing import Iterable

from ..errors import E5MistralError
from ..families import FAMILIES, family_spec
from .templates import slot_values


ALL_CONFIG = "all"
CONFIG_NAMES = FAMILIES + (ALL_CONFIG,)
META_COLUMNS = ("request_id", "family", "task", "language")
TRAILING_META = ("template_version", "generator_model")


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
