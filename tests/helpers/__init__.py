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


def one_line(err: str) -> str:
    """The single line of a user error on stderr (no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def generate_argv(base_url: str, output, *extra: str, languages=("English", "German")) -> list[str]:
    """`e5-mistral generate` arguments for a fake endpoint: quick retries, no progress bar."""
    return [
        "--model",
        "fake-llm",
        "--base-url",
        base_url,
        "--output",
        str(output),
        "--retry-initial-wait",
        "0.01",
        "--no-progress",
        *extra,
        *(["--languages", *languages] if languages else []),
    ]
