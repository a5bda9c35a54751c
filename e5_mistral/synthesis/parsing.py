"""Turn raw LLM answers into examples or task lists, or into a reject reason code. Never ``eval``.

JSON is read with bounded repair (:mod:`e5_mistral.llm.answers`). Validation then follows the family's template: exactly its keys,
non-empty strings, no nesting, and the pairs the paper needs distinct.
"""

from __future__ import annotations

import re

from ..families import family_spec
from ..llm.answers import Rejected, extract_json
from ..text import match_key
from .structured import BRAINSTORM_KEY


_LIST_ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+(.+)$")  # "- x", "* x", "• x", "1. x", "1) x"
_EMPHASIS = re.compile(r"\*\*|__|`")


def _check_answer(content: str | None, finish_reason: str | None) -> str:
    if finish_reason == "length":
        raise Rejected("truncated")  # cut by max_tokens: never parsed as if whole
    if content is None or not content.strip():
        raise Rejected("empty_response")
    return content


def parse_example(family: str, content: str | None, finish_reason: str | None = "stop") -> dict[str, str]:
    """The example's fields (stripped strings) or ``Rejected`` with a reason code."""
    obj = extract_json(_check_answer(content, finish_reason), "{")
    if not isinstance(obj, dict):
        raise Rejected("not_an_object")
    spec = family_spec(family)
    keys = spec.output_keys
    row: dict[str, str] = {}
    for key in keys:
        if key not in obj:
            raise Rejected(f"missing_key:{key}")
        value = obj[key]
        if isinstance(value, (dict, list)):
            raise Rejected(f"nested_value:{key}")
        if not isinstance(value, str):
            raise Rejected(f"not_a_string:{key}")
        if not value.strip():
            raise Rejected(f"empty_value:{key}")
        row[key] = value.strip()
    for key in obj:
        if key not in keys:
            raise Rejected(f"extra_key:{key}")
    for a, b, reason in spec.distinct:
        if match_key(row[a]) == match_key(row[b]):
            raise Rejected(reason)
    if len({match_key(row[k]) for k in spec.all_distinct}) < len(spec.all_distinct):
        raise Rejected("sentences_not_distinct")
    return row


def parse_brainstorm(
    content: str | None, finish_reason: str | None = "stop", *, accept_text_lists: bool = False
) -> list[str]:
    """The brainstormed task definitions (stripped, exact duplicates within the list removed).

    Strict by default (a JSON or Python list, as the paper asks); ``accept_text_lists`` also accepts a
    plain-text list when that fails (see :func:`parse_brainstorm_answer`).
    """
    return parse_brainstorm_answer(content, finish_reason, accept_text_lists=accept_text_lists)[0]


def parse_brainstorm_answer(
    content: str | None, finish_reason: str | None = "stop", *, accept_text_lists: bool = False
) -> tuple[list[str], bool]:
    """``(tasks, from_text_list)``: the tasks, and whether they came from the plain-text fallback.

    The fallback takes the list-item lines (``- x``, ``* x``, ``• x``, ``1. x``, ``1) x``) without Markdown
    emphasis, drops headings (ending with ':' or under 3 words) and, for an answer cut by max_tokens, its last
    line (it may be cut mid-item). When nothing survives, the strict parser's reason stands.
    """
    try:
        return _unique(_strict_brainstorm(content, finish_reason)), False
    except Rejected:
        if not accept_text_lists or not content or not content.strip():
            raise
        if content.lstrip().startswith("["):  # a JSON list that failed (e.g. cut) is not read as text
            raise
        if finish_reason == "length":
            content = content.rsplit("\n", 1)[0] if "\n" in content else ""
        tasks = _text_list_items(content)
        if not tasks:
            raise
        return _unique(tasks), True


def _strict_brainstorm(content: str | None, finish_reason: str | None) -> list[str]:
    obj = extract_json(_check_answer(content, finish_reason), "[", allow_python_literal=True)
    if isinstance(obj, dict) and list(obj) == [BRAINSTORM_KEY]:  # the structured-output shape {"tasks": [...]}
        obj = obj[BRAINSTORM_KEY]
    if not isinstance(obj, list) or not obj or not all(isinstance(t, str) and t.strip() for t in obj):
        raise Rejected("brainstorm_not_a_list_of_strings")
    return obj


def _text_list_items(text: str) -> list[str]:
    items = []
    for line in text.splitlines():
        match = _LIST_ITEM.match(line)
        if not match:
            continue
        item = _EMPHASIS.sub("", match.group(1)).strip()
        if item.endswith(":") or len(item.split()) < 3:  # a heading ("Text Preprocessing:"), not a task
            continue
        items.append(item)
    return items


def _unique(tasks: list[str]) -> list[str]:
    unique, seen = [], set()
    for task in tasks:
        key = match_key(task)
        if key not in seen:
            seen.add(key)
            unique.append(task.strip())
    return unique
