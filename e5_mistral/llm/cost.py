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
# Bounds a request cannot pass: a byte-level BPE or byte-fallback token covers at least one UTF-8 byte, and a chat
# template adds a few tokens per message around its content.
TEMPLATE_TOKENS_PER_MESSAGE = 8


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


def usage_totals(records, table: Mapping[str, Mapping[str, float]]) -> dict:
    """Prompt and completion tokens and the estimated cost of journal records (every attempt is counted)."""
    records = list(records)
    return {
        "prompt_tokens": sum((r.get("usage") or {}).get("prompt_tokens", 0) for r in records),
        "completion_tokens": sum((r.get("usage") or {}).get("completion_tokens", 0) for r in records),
        "estimated_cost_usd": round(sum(record_cost(r, table) for r in records), 6),
    }


def worst_case_tokens(body: Mapping) -> tuple[int, int]:
    """(prompt, completion) tokens one chat request cannot exceed: its messages' UTF-8 bytes (and a response format's
    schema) plus a chat template's share per message, and its completion cap (0 when it sets none)."""
    messages = body.get("messages") or []
    prompt = sum(len(str(m.get("content") or "").encode("utf-8")) for m in messages)
    prompt += TEMPLATE_TOKENS_PER_MESSAGE * len(messages)
    if body.get("response_format"):
        prompt += len(json.dumps(body["response_format"]).encode("utf-8"))
    return prompt, int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)


def worst_case_cost(body: Mapping, table: Mapping[str, Mapping[str, float]], batch: bool = False) -> tuple[int, float]:
    """(tokens, USD) that one request can cost at most."""
    prompt, completion = worst_case_tokens(body)
    record = {"model": body.get("model"), "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}
    return prompt + completion, record_cost({**record, "source": "batch" if batch else "online"}, table)


class Budget:
    """Spent totals (journal so far + this run), reservations for requests not answered yet, and the limits.

    A request is sent only when its worst case (:func:`worst_case_cost`) fits beside what is spent and what the
    requests in flight have reserved; its answer's real usage then replaces the reservation. So the limits bind:
    no set of answers can pass them, whatever the concurrency and however many requests fail."""

    def __init__(self, max_cost: float | None = None, max_tokens: int | None = None, prices: Mapping | None = None):
        self.max_cost, self.max_tokens, self.prices = max_cost, max_tokens, dict(prices or {})
        self.tokens, self.cost = 0, 0.0
        self.reserved_tokens, self.reserved_cost = 0, 0.0

    @property
    def limited(self) -> bool:
        return self.max_cost is not None or self.max_tokens is not None

    def track(self, journal) -> "Budget":
        """Count what the ``ObservedJournal`` already holds (earlier runs' spending binds too) and every record it
        gets."""
        for total in journal.totals.as_records():
            self.tokens += record_tokens(total)
            self.cost += record_cost(total, self.prices)
        journal.listeners.append(self.add)
        return self

    def add(self, record: Mapping) -> None:
        self.tokens += record_tokens(record)
        self.cost += record_cost(record, self.prices)

    def fits(self, tokens: int, cost: float) -> bool:
        """Whether a worst case of ``tokens`` and ``cost`` fits beside what is spent and reserved."""
        if self.max_tokens is not None and self.tokens + self.reserved_tokens + tokens > self.max_tokens:
            return False
        return self.max_cost is None or self.cost + self.reserved_cost + cost <= self.max_cost

    def reserve(self, tokens: int, cost: float) -> None:
        self.reserved_tokens += tokens
        self.reserved_cost += cost

    def release(self, tokens: int, cost: float) -> None:
        self.reserved_tokens -= tokens
        self.reserved_cost -= cost

    @property
    def exhausted(self) -> bool:
        return (self.max_tokens is not None and self.tokens >= self.max_tokens) or (
            self.max_cost is not None and self.cost >= self.max_cost
        )
