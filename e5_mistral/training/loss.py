"""InfoNCE over in-batch and hard negatives, with negatives gathered across processes (paper Eq. 2).

Each process scores its *local* queries against the documents of *every* process (a differentiable
``all_gather``), with labels offset by ``rank * B``. The loss is the mean over local queries; DDP averages
gradients over the W processes and the gather's backward sums the gradients flowing into each process's
documents, so W processes with batch B give exactly the loss and gradients of one process with batch W*B
(``tests/test_training_loss.py`` checks both). No ``* world_size`` correction is needed.

With Matryoshka dimensions (Kusupati et al., 2022) the same loss is also taken on the first d dimensions of every
embedding, renormalised, for each d, and the weighted sum is the loss: the model runs once, only the loss is
computed per size, so GradCache caches the full embeddings as it does without it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0, keeping the autograd graph."""
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in torch 2.13 in favour of a private API; still correct
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(tensor.contiguous()), dim=0)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def _gathered(gather: bool, with_grad: tuple, without_grad: tuple) -> tuple[int, tuple, tuple]:
    """(this process's rank, ``with_grad`` and ``without_grad`` from every process): gathered when ``gather`` and
    torch.distributed runs several processes, else as given with rank 0. A None stays None."""
    rank, world = _world()
    if not gather or world == 1:
        return 0, with_grad, without_grad
    return (
        rank,
        tuple(None if t is None else gather_with_grad(t) for t in with_grad),
        tuple(None if t is None else gather_no_grad(t) for t in without_grad),
    )


def _cosines(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    # in fp32 at least: at tau = 0.02, bf16 cosine rounding would be amplified 50x
    dtype = torch.promote_types(rows.dtype, torch.float32)
    return rows.to(dtype) @ columns.to(dtype).T


def _masked_cross_entropy(
    scores: torch.Tensor,
    keep: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``scores / temperature`` over the kept columns; each row's label is always kept. With
    ``rows``, the mean is over those rows only (the others are left out, not counted as zeros)."""
    keep[torch.arange(len(labels), device=labels.device), labels] = True
    logits = (scores / temperature).masked_fill(~keep, torch.finfo(scores.dtype).min)
    if rows is None:
        return F.cross_entropy(logits, labels)
    losses = F.cross_entropy(logits, labels, reduction="none")
    return (losses * rows).sum() / rows.sum().clamp(min=1)


def info_nce_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None = None,
    *,
    temperature: float = 0.02,
    negative_mask: torch.Tensor | None = None,
    in_batch_negatives: torch.Tensor | None = None,
    positive_hash: torch.Tensor | None = None,
    negative_hash: torch.Tensor | None = None,
    mask_identical_negatives: bool = False,
    false_negative_margin: float | None = None,
    symmetric: bool = False,
    gather: bool = True,
) -> torch.Tensor:
    """Mean InfoNCE of the local queries (with ``symmetric``, averaged with :func:`document_to_query_loss`).

    Args:
        query, positive: (B, d) L2-normalized embeddings; row i of ``positive`` is the positive of query i.
        negative: (B*K, d) hard negatives, K per query in row order (or None).
        negative_mask: (B, K) bool, False for empty negative slots.
        in_batch_negatives: (B,) bool; False rows see only their own positive and hard negatives.
        positive_hash, negative_hash: (B,), (B, K) text ids, used by ``mask_identical_negatives``.
        false_negative_margin: drop candidates with cosine above the positive's plus this margin.
        symmetric: average with the reverse direction, each positive against the batch's queries.
        gather: use the documents of every process (when torch.distributed is initialized).
    """
    batch = query.shape[0]
    k = 0 if negative is None else negative.shape[0] // max(batch, 1)
    device = query.device
    if negative_mask is None:
        negative_mask = torch.ones(batch, k, dtype=torch.bool, device=device)
    if in_batch_negatives is None:
        in_batch_negatives = torch.ones(batch, dtype=torch.bool, device=device)
    rank, (positives, negatives), (all_negative_mask, all_positive_hash, all_negative_hash) = _gathered(
        gather, (positive, negative if k else None), (negative_mask, positive_hash, negative_hash)
    )

    total = positives.shape[0]  # W * B
    scores = _cosines(query, torch.cat([positives, negatives], dim=0) if k else positives)  # (B, W*B + W*B*K)
    rows = torch.arange(batch, device=device)
    labels = rank * batch + rows

    keep = torch.ones_like(scores, dtype=torch.bool)
    if k:
        keep[:, total:] = all_negative_mask.reshape(1, -1)
    # Rows without in-batch negatives keep only their own positive and own hard negatives.
    own = torch.zeros_like(keep)
    own[rows, labels] = True
    if k:
        own_neg_cols = total + labels.unsqueeze(1) * k + torch.arange(k, device=device).unsqueeze(0)
        own.scatter_(1, own_neg_cols, True)
    keep &= own | in_batch_negatives.unsqueeze(1)
    if mask_identical_negatives and positive_hash is not None:
        candidate_hash = torch.cat([all_positive_hash, all_negative_hash.reshape(-1)]) if k else all_positive_hash
        keep &= candidate_hash.unsqueeze(0) != positive_hash.unsqueeze(1)
    if false_negative_margin is not None:
        positive_score = scores[rows, labels].detach().unsqueeze(1)
        keep &= scores.detach() <= positive_score + false_negative_margin
    loss = _masked_cross_entropy(scores, keep, labels, temperature)
    if not symmetric:
        return loss
    reverse = document_to_query_loss(
        query,
        positive,
        temperature=temperature,
        in_batch_negatives=in_batch_negatives,
        positive_hash=positive_hash,
        gather=gather,
    )
    return (loss + reverse) / 2


def document_to_query_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    *,
    temperature: float = 0.02,
    in_batch_negatives: torch.Tensor | None = None,
    positive_hash: torch.Tensor | None = None,
    gather: bool = True,
) -> torch.Tensor:
    """Mean InfoNCE of the local positives over the batch's queries: the reverse direction of
    :func:`info_nce_loss`. Rows without in-batch negatives are left out on both sides, and a query whose positive
    is the same text is not a negative."""
    batch = query.shape[0]
    if in_batch_negatives is None:
        in_batch_negatives = torch.ones(batch, dtype=torch.bool, device=query.device)
    rank, (queries,), (all_in_batch, all_positive_hash) = _gathered(
        gather, (query,), (in_batch_negatives, positive_hash)
    )
    scores = _cosines(positive, queries)  # (B, W*B)
    keep = in_batch_negatives.unsqueeze(1) & all_in_batch.unsqueeze(0)
    if positive_hash is not None:
        keep &= all_positive_hash.unsqueeze(0) != positive_hash.unsqueeze(1)
    labels = rank * batch + torch.arange(batch, device=query.device)
    return _masked_cross_entropy(scores, keep, labels, temperature, rows=in_batch_negatives.to(scores.dtype))


def truncated(embeddings: torch.Tensor | None, dim: int) -> torch.Tensor | None:
    """The first ``dim`` dimensions of each row, L2-normalised again."""
    return None if embeddings is None else F.normalize(embeddings[..., :dim], dim=-1)


def matryoshka_info_nce_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None,
    dims: list[int],
    weights: list[float] | None = None,
    **kwargs,
) -> torch.Tensor:
    """Sum over ``dims`` of ``weight * info_nce_loss`` on the truncated, renormalised embeddings (weights: 1 each).
    ``kwargs`` are :func:`info_nce_loss`'s."""
    width = query.shape[-1]
    if any(dim < 1 or dim > width for dim in dims):
        raise ValueError(f"matryoshka_dims must lie in 1..{width} (the embedding size), got {dims}")
    weights = weights or [1.0] * len(dims)
    return sum(
        weight * info_nce_loss(truncated(query, dim), truncated(positive, dim), truncated(negative, dim), **kwargs)
        for dim, weight in zip(dims, weights)
    )
