"""Small builders shared by several test modules."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


WORDS = (
    "apple river stone cloud music garden window paper light forest engine bridge ocean candle pencil mirror".split()
)


def sentence(i: int) -> str:
    return f"the {WORDS[i % len(WORDS)]} and the {WORDS[(3 * i + 1) % len(WORDS)]} number {i}"
