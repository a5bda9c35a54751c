"""Text helpers shared by the stages."""

from __future__ import annotations


def match_key(text: str) -> str:
    """Case-folded, whitespace collapsed: how two texts are compared for being the same (the paper's exact-match
    dedup, decontamination, one document per label)."""
    return " ".join(text.casefold().split())
