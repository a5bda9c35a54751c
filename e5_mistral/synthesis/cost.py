"""Token accounting, cost estimates from a user-supplied price table, and the hard budget.

Prices are never hard-coded: ``--price-table`` gives USD per million tokens per model, e.g.
``{"gpt-4o-mini": {"input": 0.15, "output": 0.60}, "*": {"input": 1, "output": 2}}`` (``*`` = any other
model). Answers that came through the Batch API cost half (``BATCH_DISCOUNT``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from ..errors import E5MistralError, MissingFileError


BATCH_DISCOUNT = 0.5


def load_price_table(spec: str | Mapping | None) -> dict[str, dict[str, float]]:
    """Parse a price table given inline as JSON, as a path to a JSON file, or as a mapping."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, str):
        text = spec if spec.lstrip().startswith("{") else None
        if text is None:
            path = Path(spec)
            if not path.is_file():
                raise MissingFileError(f"price table {spec!r} is neither a JSON object nor an existing file")
            text = path.read_text(encoding="utf-8")
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise E5MistralError(f"price table is not valid JSON: {err}") from None
    table = {}
    for model, entry in dict(spec).items():
        if not isinstance(entry, Mapping) or not {"input", "output"} <= entry.keys():
            raise E5MistralError(f'price table entry {model!r} must be {{"input": USD per 1M tokens, "output": ...}}')
        table[model] = {"input": float(entry["input"]), "output": float(entry["output"])}
    return table


def price_for(table: Mapping[str, Mapping[str, float]], model: str | None) -> Mapping[str, float] | None:
    return table.get(model or "") or table.get("*")


def record_cost(record: Mapping, table: Mapping[str, Mapping[str, float]]) -> float:
    price = price_for(table, record.get("model"))
    if price is None:
        return 0.0
    usage = record.get("usage") or {}
    cost = (usage.get("prompt_tokens", 0) * price["input"] + usage.get("completion_tokens", 0) * price["output"]) / 1e6
    return cost * (BATCH_DISCOUNT if record.get("source") == "batch" else 1.0)


def record_tokens(record: Mapping) -> int:
    usage = record.get("usage") or {}
    return int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))


class Budget:
    """Running totals (journal so far + this run) and the limits that stop new requests."""

    def __init__(self, max_cost: float | None = None, max_tokens: int | None = None, prices: Mapping | None = None):
        self.max_cost, self.max_tokens, self.prices = max_cost, max_tokens, dict(prices or {})
        self.tokens, self.cost, self.records = 0, 0.0, 0

    def add(self, record: Mapping) -> None:
        self.tokens += record_tokens(record)
        self.cost += record_cost(record, self.prices)
        self.records += 1

    def allows(self, in_flight: int = 0) -> bool:
        """Whether one more request fits, counting requests in flight at the average cost seen so far."""
        pending = in_flight + 1
        mean_tokens = self.tokens / self.records if self.records else 0.0
        mean_cost = self.cost / self.records if self.records else 0.0
        if self.max_tokens is not None and self.tokens + pending * mean_tokens > self.max_tokens:
            return False
        if self.max_cost is not None and self.cost + pending * mean_cost > self.max_cost:
            return False
        return True

    @property
    def exhausted(self) -> bool:
        return (self.max_tokens is not None and self.tokens >= self.max_tokens) or (
            self.max_cost is not None and self.cost >= self.max_cost
        )
