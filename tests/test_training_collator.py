"""The collator's EOS contract and end-to-end pooling through it (left/right padding, batch of one)."""

from __future__ import annotations

import pytest
import torch

from e5_mistral.pooling import encode
from e5_mistral.training.collator import E5DataCollator, ensure_pad_token, text_hash


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def backbone(tiny_model_dir):
    from transformers import AutoModel

    torch.manual_seed(0)
    return AutoModel.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


ROWS = [
    {
        "query": "Instruct: t\nQuery: how to cook rice",
        "positive": "A man is playing a guitar.",
        "negatives": ["Two dogs run."],
    },
    {
        "query": "Instruct: t\nQuery: fox",
        "positive": "The quick brown fox jumps over the lazy dog. " * 3,
        "negatives": [],
    },
]


def test_eos_appended_once_and_survives_truncation(tokenizer):
    collator = E5DataCollator(tokenizer, max_seq_length=8, num_hard_negatives=1)
    batch = collator(ROWS)
    eos = tokenizer.eos_token_id
    for ids, mask in zip(batch["doc_input_ids"], batch["doc_attention_mask"]):
        real = ids[mask.bool()].tolist()
        assert real[-1] == eos and real.count(eos) == 1 and len(real) <= 8
    long_doc = batch["doc_input_ids"][1][batch["doc_attention_mask"][1].bool()]
    assert len(long_doc) == 8  # truncated to max_length - 1, then EOS
    # Two positives, then one negative slot per query: the second is empty (a bare EOS) and masked.
    assert batch["doc_input_ids"].shape[0] == 4
    assert batch["negative_mask"].tolist() == [[True], [False]]
    assert batch["positive_hash"].tolist() == [text_hash(r["positive"]) for r in ROWS]


def test_query_max_length(tokenizer):
    batch = E5DataCollator(tokenizer, max_seq_length=64, query_max_length=5, num_hard_negatives=1)(ROWS)
    assert batch["query_attention_mask"].sum(1).max() == 5
    assert batch["doc_attention_mask"].sum(1).max() > 5


def test_tokenizer_that_adds_eos_itself_gets_exactly_one(tokenizer):
    from tokenizers import processors

    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.bos_token_id), ("</s>", tok.eos_token_id)]
    )
    assert tok("fox")["input_ids"][-1] == tok.eos_token_id
    batch = E5DataCollator(tok, max_seq_length=16, num_hard_negatives=0)(ROWS)
    for ids, mask in zip(batch["query_input_ids"], batch["query_attention_mask"]):
        real = ids[mask.bool()].tolist()
        assert real[0] == tok.bos_token_id and real[-1] == tok.eos_token_id and real.count(tok.eos_token_id) == 1


def test_tokenizer_without_pad_token_uses_unk(tokenizer):
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.pad_token = None
    batch = E5DataCollator(tok, max_seq_length=16)(ROWS)
    assert tok.pad_token == tok.unk_token != tok.eos_token
    assert batch["doc_attention_mask"].sum() < batch["doc_attention_mask"].numel()
    no_unk = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    no_unk.pad_token, no_unk.unk_token = None, None
    ensure_pad_token(no_unk)
    assert no_unk.pad_token_id == no_unk.eos_token_id


def test_pooling_picks_eos_for_both_padding_sides_and_batch_of_one(tokenizer, backbone):
    """Through the collator: left padding == right padding == each text alone, at the EOS position."""
    texts = [r["positive"] for r in ROWS] + ["Le chat est assis sur le tapis."]
    rows = [{"query": t, "positive": t, "negatives": []} for t in texts]
    outputs = {}
    for side in ("left", "right"):
        tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path, padding_side=side)
        collator = E5DataCollator(tok, max_seq_length=64, num_hard_negatives=0)
        batch = collator(rows)
        ids, mask = batch["doc_input_ids"], batch["doc_attention_mask"]
        assert (mask == 0).any()  # the batch really is padded
        eos_positions = (ids == tok.eos_token_id) & mask.bool()
        assert eos_positions.sum(1).tolist() == [1, 1, 1]
        with torch.no_grad():
            outputs[side] = encode(backbone, ids, mask)
            # The pooled vector is the hidden state at the EOS position.
            hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
            at_eos = torch.nn.functional.normalize(hidden[eos_positions], dim=-1)
            torch.testing.assert_close(outputs[side], at_eos)
            single = torch.cat(
                [
                    encode(
                        backbone,
                        **{
                            k: v
                            for k, v in zip(
                                ("input_ids", "attention_mask"), (b["doc_input_ids"], b["doc_attention_mask"])
                            )
                        },
                    )
                    for b in (collator([r]) for r in rows)
                ]
            )
        torch.testing.assert_close(outputs[side], single, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outputs["left"], outputs["right"], atol=1e-5, rtol=1e-4)
