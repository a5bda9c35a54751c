"""Reading JSON out of an LLM's answer, with bounded repair; never ``eval``.

Repair: the text as is, then inside a code fence, then the first balanced ``{...}`` / ``[...]``, each also with
trailing commas removed.
"""

from __future__ import annotations

import ast
import json
import re


_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


class Rejected(ValueError):
    """An answer that is not usable; ``reason`` is a short code (``missing_key:label``, ``truncated``, ...)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _balanced(text: str, opener: str) -> str | None:
    """The first balanced ``{...}`` (or ``[...]``) span, skipping brackets inside JSON strings."""
    closer = {"{": "}", "[": "]"}[opener]
    start = text.find(opener)
    if start < 0:
        return None
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == opener:
            depth += 1
        elif ch == closer:
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None


def _candidates(text: str, opener: str):
    stripped = text.strip()
    yield stripped
    fence = _FENCE.search(stripped)
    if fence:
        yield fence.group(1).strip()
    span = _balanced(stripped, opener)
    if span:
        yield span


def extract_json(text: str, opener: str = "{", allow_python_literal: bool = False):
    """Parse ``text`` as JSON after bounded repair; raises ``Rejected("invalid_json")``."""
    for candidate in _candidates(text, opener):
        for attempt in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
            try:
                return json.loads(attempt)
            except json.JSONDecodeError:
                pass
            if allow_python_literal:
                # The brainstorm prompt asks for "a python list of strings": accept Python literal syntax
                # (single quotes) through ast.literal_eval, which evaluates literals only, never code.
                try:
                    return ast.literal_eval(attempt)
                except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
                    pass
    raise Rejected("invalid_json")
