"""Placeholder until the quickstart lands (issue 7)."""

from __future__ import annotations

from .cli import CommandParser


def main(argv=None, prog: str = "e5-mistral quickstart") -> int:
    CommandParser([], prog=prog, description="Run the whole pipeline offline on SmolLM2-135M-Instruct.").parse_args(argv)
    raise SystemExit(f"{prog}: error: not implemented yet")
