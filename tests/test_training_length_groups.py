"""Length-sorted grouped encoding: same loss and gradients as one pass, fewer padded tokens, both padding sides."""

from __future__ import annotations

import pytest
import torch

from e5_mistral.training.length_groups import length_sorted_groups, merge_padded, trim_padding
from tests.helpers.training import write_synthetic_folder
from tests.test_training_trainer import grads_of_one_step, make_trainer


def padded(lengths, width, side, start):
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        ids[row, cols] = torch.arange(start + 10 * row, start + 10 * row + n)
        mask[row, cols] = 1
    return ids, mask


@pytest.mark.parametrize("side", ["right", "left"])
def test_merge_trim_and_groups_keep_every_token(side):
    queries = padded([2, 3], 3, side, start=100)
    docs = padded([6, 1, 4, 5], 6, side, start=200)
    ids, mask = merge_padded([queries, docs], pad_id=0, padding_side=side)
    assert ids.shape == mask.shape == (6, 6)
    assert mask.sum(1).tolist() == [2, 3, 6, 1, 4, 5]
    # Padding stays on the tokenizer's side, so the last real token is at the edge for left padding.
    edge = 0 if side == "right" else -1
    assert mask[:, edge].all()
    groups = length_sorted_groups(mask, 4)
    assert [g.tolist() for g in groups] == [[2, 5, 4, 1], [0, 3]]  # longest first
    for rows in groups:
        g_ids, g_mask = trim_padding(ids[rows], mask[rows])
        assert g_mask.shape[1] == int(mask[rows].sum(1).max())  # trimmed to the group's longest text
        for r, row in enumerate(rows.tolist()):
            assert g_ids[r][g_mask[r].bool()].tolist() == ids[row][mask[row].bool()].tolist()
    assert sorted(torch.cat(groups).tolist()) == list(range(6))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic_folder(tmp_path_factory.mktemp("synthetic"), rows_per_family=4)


@pytest.mark.parametrize("side", ["right", "left"])
def test_grouped_loss_and_gradients_equal_one_pass_with_less_padding(tiny_model_dir, data_dir, tmp_path, side):
    trainer = make_trainer(
        tiny_model_dir,
        data_dir,
        tmp_path / "groups",
        use_lora=True,
        per_device_train_batch_size=12,
        num_hard_negatives=1,
        max_seq_length=48,
        length_groups=1,
    )
    trainer.processing_class.padding_side = side  # the collator pads with the same tokenizer
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:  # B starts at zero, which would leave A without gradient
                p.normal_(0, 0.02)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    tokens = []
    encode = trainer._encode
    trainer._encode = lambda model, ids, mask: tokens.append(ids.numel()) or encode(model, ids, mask)
    loss, grads = grads_of_one_step(trainer, batch)
    one_pass = sum(tokens)
    tokens.clear()
    trainer.args.length_groups = 4
    grouped_loss, grouped = grads_of_one_step(trainer, batch)
    torch.testing.assert_close(grouped_loss, loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == grouped.keys() and len(grads) > 0
    flat, flat_grouped = (
        torch.cat([g.flatten() for g in grads.values()]),
        torch.cat([g.flatten() for g in grouped.values()]),
    )
    assert flat.norm() > 0 and ((flat_grouped - flat).norm() / flat.norm()).item() < 1e-5
    per_column = batch["query_input_ids"].numel() + batch["doc_input_ids"].numel()
    assert len(tokens) == 4 and sum(tokens) < per_column <= one_pass
