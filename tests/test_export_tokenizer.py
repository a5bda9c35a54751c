"""The EOS contract baked into the exported tokenizer, checked against the training collator's ids."""

from __future__ import annotations

import pytest
from tokenizers import processors

from e5_mistral.export.eos_contract import bake_eos_contract, default_affixes


TEXTS = ["x", "how to cook rice", "Instruct: Retrieve semantically similar text.\nQuery: A man is playing a guitar."]
LONG = "The quick brown fox jumps over the lazy dog. " * 50


def _tokenizer(tiny_model_dir, single: str | None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    if single is not None:
        specials = [(t, tokenizer.convert_tokens_to_ids(t)) for t in ("<s>", "</s>") if t in single]
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=specials
        )
    return tokenizer


def _collator_ids(tokenizer, texts, max_length):
    """What the training collator feeds the model (its own tokenize method)."""
    from e5_mistral.training.collator import E5DataCollator

    return E5DataCollator(tokenizer, max_seq_length=max_length).tokenize(texts, max_length)


@pytest.mark.parametrize(
    "single, prefix, suffix",
    [
        (None, (), ("</s>",)),  # adds nothing by default (SmolLM2-like): EOS only
        ("<s> $A", ("<s>",), ("</s>",)),  # Mistral: BOS by default, EOS added by the export
        ("<s> $A </s>", ("<s>",), ("</s>",)),  # already adds EOS: still exactly one
    ],
)
def test_exported_ids_equal_collator_ids(tiny_model_dir, tmp_path, single, prefix, suffix):
    from transformers import AutoTokenizer

    tokenizer = _tokenizer(tiny_model_dir, single)
    expected = _collator_ids(tokenizer, TEXTS + [LONG], 32)
    bake_eos_contract(tokenizer)
    tokenizer.model_max_length = 32
    tokenizer.save_pretrained(tmp_path)
    exported = AutoTokenizer.from_pretrained(tmp_path)
    assert exported(TEXTS + [LONG], truncation=True).input_ids == expected
    affixes = default_affixes(exported)
    assert tuple(exported.convert_ids_to_tokens(list(affixes.prefix))) == prefix
    assert tuple(exported.convert_ids_to_tokens(list(affixes.suffix))) == suffix
    long_ids = exported(LONG, truncation=True).input_ids
    assert len(long_ids) == 32 and long_ids[-1] == exported.eos_token_id


def test_no_append_eos_keeps_the_default(tiny_model_dir):
    tokenizer = _tokenizer(tiny_model_dir, "<s> $A")
    before = tokenizer("x").input_ids
    bake_eos_contract(tokenizer, append_eos=False)
    assert tokenizer("x").input_ids == before


def test_tokenizer_without_eos_is_rejected(tiny_model_dir):
    tokenizer = _tokenizer(tiny_model_dir, None)
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="no eos_token"):
        bake_eos_contract(tokenizer)


def test_eval_summary_shapes(tmp_path):
    import json

    from e5_mistral.export.model_card import load_eval_results

    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"my-model": {"STSBenchmark": 0.8, "NoSuchTask": 0.5}}))
    scores, source = load_eval_results(tmp_path)
    assert source == path and [(s.task, s.score, s.type) for s in scores] == [
        ("STSBenchmark", 0.8, "STS"),
        ("NoSuchTask", 0.5, "feature-extraction"),
    ]
    path.write_text(json.dumps({"a": {"STSBenchmark": 0.8}, "b": {"STSBenchmark": 0.7}}))
    with pytest.raises(ValueError, match="several models"):
        load_eval_results(path)
    path.write_text(json.dumps({"STSBenchmark": {"main_score": 0.81}}))
    assert load_eval_results(path)[0][0].score == 0.81
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="non-empty JSON object"):
        load_eval_results(path)
