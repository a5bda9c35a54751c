"""InfoNCE against hand-computed values, its masking options, and W processes x B == 1 process x W*B."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from e5_mistral.training import loss as loss_module
from e5_mistral.training.loss import info_nce_loss


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_matches_hand_computed_value():
    q = unit([1.0, 0.0], [0.0, 1.0])
    p = unit([1.0, 0.0], [1.0, 1.0])
    n = unit([0.0, 1.0], [1.0, 0.0])
    tau = 0.5
    # Query 0 candidates: p0, p1, n0, n1 with cosines 1, 1/sqrt2, 0, 1; label p0.
    c = 1 / math.sqrt(2)
    l0 = -math.log(math.exp(1 / tau) / sum(math.exp(s / tau) for s in (1, c, 0, 1)))
    # Query 1 candidates cosines: 0, 1/sqrt2, 1, 0; label p1.
    l1 = -math.log(math.exp(c / tau) / sum(math.exp(s / tau) for s in (0, c, 1, 0)))
    got = info_nce_loss(q, p, n, temperature=tau)
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_masks():
    q = unit([1.0, 0.0], [0.0, 1.0])
    p = unit([1.0, 0.0], [1.0, 1.0])
    n = unit([0.0, 1.0], [1.0, 0.0])
    tau, c = 0.5, 1 / math.sqrt(2)
    e = lambda s: math.exp(s / tau)  # noqa: E731
    # Empty negative slot for query 1 (its n1) and no in-batch negatives for query 0.
    got = info_nce_loss(
        q,
        p,
        n,
        temperature=tau,
        negative_mask=torch.tensor([[True], [False]]),
        in_batch_negatives=torch.tensor([False, True]),
    )
    l0 = -math.log(e(1) / (e(1) + e(0)))  # own positive and own negative only
    l1 = -math.log(e(c) / (e(0) + e(c) + e(1)))  # p0, p1, n0 (n1 masked)
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # Identical-text masking: query 0's candidate n1 has the same text as its positive.
    hashes = dict(positive_hash=torch.tensor([7, 8]), negative_hash=torch.tensor([[9], [7]]))
    got = info_nce_loss(q, p, n, temperature=tau, mask_identical_negatives=True, **hashes)
    l0 = -math.log(e(1) / (e(1) + e(c) + e(0)))
    l1 = -math.log(e(c) / (e(0) + e(c) + e(1) + e(0)))
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # Margin masking: for query 1, n0 (cos 1) scores above its positive (cos 0.707) + 0.1.
    got = info_nce_loss(q, p, n, temperature=tau, false_negative_margin=0.1)
    l0 = -math.log(e(1) / (e(1) + e(c) + e(0) + e(1)))
    l1 = -math.log(e(c) / (e(0) + e(c) + e(0)))
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_world_processes_equal_one_full_batch(monkeypatch):
    """Simulate W ranks: each scores its local queries against every rank's documents (as the differentiable
    all_gather does); DDP averages the per-rank gradients. Loss and gradients must equal one rank with W*B."""
    torch.manual_seed(0)
    world, batch, k, dim = 4, 3, 2, 8
    # float64, so that the comparison is about the algebra, not fp32 rounding at 1/tau = 50.
    q = F.normalize(torch.randn(world * batch, dim, dtype=torch.float64), dim=-1).requires_grad_()
    p = F.normalize(torch.randn(world * batch, dim, dtype=torch.float64), dim=-1).requires_grad_()
    n = F.normalize(torch.randn(world * batch * k, dim, dtype=torch.float64), dim=-1).requires_grad_()
    mask = torch.rand(world * batch, k) > 0.3
    in_batch = torch.tensor([True, False, True] * world)
    kwargs = dict(temperature=0.02, false_negative_margin=0.2)

    full = info_nce_loss(q, p, n, negative_mask=mask, in_batch_negatives=in_batch, gather=False, **kwargs)
    full_grads = torch.autograd.grad(full, (q, p, n))

    gathered = {"p": p, "n": n}
    per_rank = []
    for rank in range(world):
        sl, sn = slice(rank * batch, (rank + 1) * batch), slice(rank * batch * k, (rank + 1) * batch * k)
        monkeypatch.setattr(loss_module, "_world", lambda rank=rank: (rank, world))
        calls = iter([gathered["p"], gathered["n"]])
        monkeypatch.setattr(loss_module, "gather_with_grad", lambda t: next(calls))
        monkeypatch.setattr(loss_module, "gather_no_grad", lambda t: mask)
        per_rank.append(
            info_nce_loss(q[sl], p[sl], n[sn], negative_mask=mask[sl], in_batch_negatives=in_batch[sl], **kwargs)
        )
    # Each rank's backward reaches every rank's documents through the gather (summed by its backward);
    # DDP then averages over the W ranks: the effective objective is the mean of the per-rank losses.
    ddp = torch.stack(per_rank).mean()
    ddp_grads = torch.autograd.grad(ddp, (q, p, n))
    torch.testing.assert_close(ddp, full, rtol=1e-12, atol=1e-12)
    for got, want in zip(ddp_grads, full_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def _hand_info_nce(q, p, n, tau) -> float:
    """Mean over queries of -log softmax of the own positive among every positive and negative (plain Python)."""
    candidates = list(p) + list(n)
    total = 0.0
    for i, query in enumerate(q):
        scores = [sum(a * b for a, b in zip(query, c)) / tau for c in candidates]
        total += -(scores[i] - math.log(sum(math.exp(s) for s in scores)))
    return total / len(q)


def _renormalised(rows, dim):
    out = []
    for row in rows:
        head = row[:dim]
        norm = math.sqrt(sum(x * x for x in head))
        out.append([x / norm for x in head])
    return out


def test_matryoshka_loss_is_the_weighted_sum_over_truncated_renormalised_embeddings():
    torch.manual_seed(0)
    q, p, n = (F.normalize(torch.randn(3, 8), dim=-1) for _ in range(3))
    dims, weights, tau = [8, 4, 2], [1.0, 0.5, 0.25], 0.1
    expected = sum(
        w * _hand_info_nce(*(_renormalised(t.tolist(), d) for t in (q, p, n)), tau) for d, w in zip(dims, weights)
    )
    got = loss_module.matryoshka_info_nce_loss(q, p, n, dims, weights, temperature=tau)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    unweighted = loss_module.matryoshka_info_nce_loss(q, p, n, [8], temperature=tau)
    assert unweighted.item() == pytest.approx(info_nce_loss(q, p, n, temperature=tau).item(), rel=1e-6)
    with pytest.raises(ValueError, match="1..8"):
        loss_module.matryoshka_info_nce_loss(q, p, n, [16], temperature=tau)


def test_symmetric_loss_adds_the_reverse_direction_with_its_masks():
    q = unit([1.0, 0.0], [0.0, 1.0], [1.0, 1.0])
    p = unit([1.0, 0.0], [1.0, 1.0], [0.0, 1.0])
    tau, c = 0.5, 1 / math.sqrt(2)
    e = lambda s: math.exp(s / tau)  # noqa: E731
    # Each positive against the three queries: p0 -> q0 (1, 0, c), p1 -> q1 (c, c, 1), p2 -> q2 (0, 1, c).
    rows = [(0, (1, 0, c)), (1, (c, c, 1)), (2, (0, 1, c))]
    reverse = sum(-math.log(e(s[i]) / sum(map(e, s))) for i, s in rows) / 3
    got = loss_module.document_to_query_loss(q, p, temperature=tau)
    assert got.item() == pytest.approx(reverse, rel=1e-6)
    forward = info_nce_loss(q, p, temperature=tau).item()
    assert info_nce_loss(q, p, temperature=tau, symmetric=True).item() == pytest.approx((forward + reverse) / 2)
    # Row 1 without in-batch negatives sees only its own query and is offered to no other row.
    got = loss_module.document_to_query_loss(
        q, p, temperature=tau, in_batch_negatives=torch.tensor([True, False, True])
    )
    # ... and is left out of the mean, not counted as a zero (rows 0 and 2 make the mean)
    masked = [-math.log(e(1) / (e(1) + e(c))), -math.log(e(c) / (e(0) + e(c)))]
    assert got.item() == pytest.approx(sum(masked) / 2, rel=1e-6)
    # Rows 0 and 2 share their positive's text: neither query is a negative of the other's positive.
    got = loss_module.document_to_query_loss(q, p, temperature=tau, positive_hash=torch.tensor([5, 6, 5]))
    masked = [-math.log(e(1) / (e(1) + e(0))), -math.log(e(c) / (2 * e(c) + e(1))), -math.log(e(c) / (e(1) + e(c)))]
    assert got.item() == pytest.approx(sum(masked) / 3, rel=1e-6)
