"""Encode a step's texts in length-sorted groups, each padded only to its own longest text.

The queries and documents of a step are merged into one list, sorted by token count and cut into groups; each
group is trimmed to its longest text and encoded in one forward pass, then the rows are put back in order. With
one pass per column, every text costs as much as the longest text of its column; here short texts (most
queries) are grouped with short texts, so far less compute goes into padding, and there are fewer passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def merge_padded(batches: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int, padding_side: str = "right"):
    """Stack padded (input_ids, attention_mask) batches of different widths into one, padding on ``padding_side``."""
    width = max(ids.shape[1] for ids, _ in batches)
    all_ids, all_masks = [], []
    for ids, mask in batches:
        extra = width - ids.shape[1]
        pad = (extra, 0) if padding_side == "left" else (0, extra)
        all_ids.append(F.pad(ids, pad, value=pad_id))
        all_masks.append(F.pad(mask, pad, value=0))
    return torch.cat(all_ids), torch.cat(all_masks)


def trim_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Drop the columns that are padding in every row, on either side (the padding side is kept)."""
    used = attention_mask.any(dim=0).nonzero()
    if not used.numel():
        return input_ids, attention_mask
    lo, hi = int(used.min()), int(used.max()) + 1
    return input_ids[:, lo:hi], attention_mask[:, lo:hi]


def length_sorted_groups(attention_mask: torch.Tensor, group_size: int) -> list[torch.Tensor]:
    """Row indices sorted by length, longest first (an out-of-memory error shows at once), in groups of ``group_size``."""
    order = torch.argsort(attention_mask.sum(dim=1), descending=True, stable=True)
    return list(order.split(max(int(group_size), 1)))
