"""Tokenize (query, positive, negatives) rows into padded tensors, appending EOS ourselves.

The tokenizer's own ``add_eos_token`` is never trusted (silently ignored for Mistral tokenizers under
transformers 5): each text is tokenized, a trailing EOS the tokenizer may have added is removed, the ids are
cut to ``max_length - 1`` and ``eos_token_id`` is appended, so EOS always survives truncation. Padding
follows ``tokenizer.padding_side``; positions come from the attention mask, never from the pad id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import E5MistralError
from ..pooling import ensure_pad_token


def text_hash(text: str) -> int:
    """A stable 63-bit id of a text, equal on every process (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 1


@dataclass
class E5DataCollator:
    """Collate rows with ``query``, ``positive``, ``negatives`` (list), ``in_batch_negatives`` into a batch.

    Output: ``query_input_ids/attention_mask`` (B, Lq); ``doc_input_ids/attention_mask`` (B + B*K, Ld) with the
    B positives first, then K negative slots per query in row order; ``negative_mask`` (B, K) telling real
    negatives from empty slots; ``positive_hash``/``negative_hash`` for false-negative masking;
    ``in_batch_negatives`` (B,).

    >>> collator = E5DataCollator(tokenizer, max_seq_length=128, num_hard_negatives=1)  # doctest: +SKIP
    >>> batch = collator([{"query": "Instruct: t\\nQuery: q", "positive": "d", "negatives": ["n"]}])  # doctest: +SKIP
    """

    tokenizer: Any
    max_seq_length: int = 512
    query_max_length: int | None = None
    num_hard_negatives: int = 1
    append_eos: bool = True
    pad_to_multiple_of: int | None = None

    def __post_init__(self):
        ensure_pad_token(self.tokenizer)
        if self.append_eos and self.tokenizer.eos_token_id is None:
            raise E5MistralError("append_eos needs a tokenizer with an eos token")

    def tokenize(self, texts: list[str], max_length: int) -> list[list[int]]:
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
        if not self.append_eos:
            return encoded
        eos = self.tokenizer.eos_token_id
        out = []
        for ids in encoded:
            if ids and ids[-1] == eos:  # the tokenizer added one itself: we add exactly one below
                ids = ids[:-1]
            out.append(ids[: max_length - 1] + [eos])
        return out

    def pad(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        return self.tokenizer.pad(
            {"input_ids": ids},
            padding=True,
            pad_to_multiple_of=self.pad_to_multiple_of,
            return_attention_mask=True,
            return_tensors="pt",
        )

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        k = self.num_hard_negatives
        queries = [row["query"] for row in rows]
        positives = [row["positive"] for row in rows]
        negatives, negative_mask, negative_hash = [], [], []
        for row in rows:
            own = list(row.get("negatives") or [])[:k]
            negative_mask.append([True] * len(own) + [False] * (k - len(own)))
            negative_hash.append([text_hash(t) for t in own] + [-1] * (k - len(own)))
            # Empty slots are encoded as a bare EOS (cheap) and masked out of the loss.
            negatives += own + [""] * (k - len(own))
        query_batch = self.pad(self.tokenize(queries, self.query_max_length or self.max_seq_length))
        doc_batch = self.pad(self.tokenize(positives + negatives, self.max_seq_length))
        return {
            "query_input_ids": query_batch["input_ids"],
            "query_attention_mask": query_batch["attention_mask"],
            "doc_input_ids": doc_batch["input_ids"],
            "doc_attention_mask": doc_batch["attention_mask"],
            "negative_mask": torch.tensor(negative_mask, dtype=torch.bool).reshape(len(rows), k),
            "positive_hash": torch.tensor([text_hash(t) for t in positives], dtype=torch.long),
            "negative_hash": torch.tensor(negative_hash, dtype=torch.long).reshape(len(rows), k),
            "in_batch_negatives": torch.tensor(
                [bool(row.get("in_batch_negatives", True)) for row in rows], dtype=torch.bool
            ),
        }
