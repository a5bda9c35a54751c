"""End to end with the training stage: 2 E5Trainer steps on the tiny model, then export and round-trip."""

from __future__ import annotations

import pytest
import torch

from e5_mistral.instructions import format_query


ROWS = [
    ("how to cook rice", "Cook the rice in boiling water.", "The stock market fell sharply."),
    ("quick brown fox", "The quick brown fox jumps over the lazy dog.", "A woman is slicing an onion."),
    ("guitar player", "A man is playing a guitar.", "Two dogs run across the field."),
    ("glucose energy", "Photosynthesis stores energy in glucose.", "Le chat est assis sur le tapis."),
]
TASK = "Given a web search query, retrieve relevant passages that answer the query"


@pytest.mark.parametrize("use_lora", [True, False], ids=["lora", "full"])
def test_trained_checkpoint_round_trips(tiny_model_dir, tmp_path, use_lora):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    from e5_mistral.export import ExportArguments, export_checkpoint
    from e5_mistral.pooling import encode
    from e5_mistral.training.e5_config import E5TrainingConfig, ModelArguments
    from e5_mistral.training.e5_trainer import E5Trainer
    from e5_mistral.training.model import load_backbone, load_tokenizer

    dataset = Dataset.from_dict(
        {
            "query": [format_query(TASK, q) for q, _, _ in ROWS],
            "positive": [p for _, p, _ in ROWS],
            "negatives": [[n] for _, _, n in ROWS],
            "dataset_id": [0] * len(ROWS),
            "in_batch_negatives": [True] * len(ROWS),
        }
    )
    args = E5TrainingConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        use_lora=use_lora,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        max_seq_length=48,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        warmup_steps=0,
    )
    model_args = ModelArguments(model_name_or_path=str(tiny_model_dir), dtype="float32")
    tokenizer = load_tokenizer(model_args)
    model = load_backbone(model_args, args, tokenizer)
    trainer = E5Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        dataset_infos=[
            {
                "path": "inline",
                "name": None,
                "split": "train",
                "sampling_ratio": 1.0,
                "instruction": TASK,
                "num_rows": len(ROWS),
            }
        ],
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "run"))

    texts = [format_query(TASK, "rice recipes"), ROWS[1][1], "x", "word " * 200]
    collator = trainer.data_collator
    batch = collator.pad(collator.tokenize(texts, args.max_seq_length))
    trained = trainer.model.eval()
    with torch.no_grad():
        reference = encode(trained, batch["input_ids"], batch["attention_mask"], "lasttoken")

    out = tmp_path / "export"
    export_checkpoint(ExportArguments(checkpoint_dir=str(tmp_path / "run"), output_dir=str(out)))
    model = SentenceTransformer(str(out), device="cpu")
    assert model.max_seq_length == 48
    batched = model.encode(texts, convert_to_tensor=True)
    single = torch.stack([model.encode([t], convert_to_tensor=True)[0] for t in texts])
    torch.testing.assert_close(batched, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(single, reference, atol=1e-5, rtol=0)
    prompted = model.encode(["rice recipes"], prompt_name="query", convert_to_tensor=True)
    torch.testing.assert_close(prompted[0], reference[0], atol=1e-5, rtol=0)


def test_smollm2_tokenizer_lora_export_round_trips(smollm2_dir, tmp_path):
    """SmolLM2's real tokenizer (adds no BOS by default, pad == eos) on a shrunken random Llama of its vocab."""
    import json

    from peft import LoraConfig, get_peft_model
    from sentence_transformers import SentenceTransformer
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from e5_mistral.export import ExportArguments, export_checkpoint
    from e5_mistral.pooling import encode
    from e5_mistral.training.collator import E5DataCollator

    config = AutoConfig.from_pretrained(smollm2_dir)
    config.update(
        {
            "num_hidden_layers": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
        }
    )
    torch.manual_seed(0)
    base_dir = tmp_path / "base"
    AutoModel.from_config(config).save_pretrained(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.save_pretrained(base_dir)
    base = AutoModel.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    gen = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=gen) * 0.5
    ckpt = tmp_path / "run"
    model.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    (ckpt / "e5_mistral_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(base_dir), "max_seq_length": 32})
    )

    texts = [format_query(TASK, "rice recipes"), ROWS[1][1], "word " * 100, "x"]
    collator = E5DataCollator(tokenizer, max_seq_length=32)
    batch = collator.pad(collator.tokenize(texts, 32))
    with torch.no_grad():
        reference = encode(model.eval(), batch["input_ids"], batch["attention_mask"], "lasttoken")

    out = tmp_path / "export"
    export_checkpoint(ExportArguments(checkpoint_dir=str(ckpt), output_dir=str(out)))
    exported = AutoTokenizer.from_pretrained(out)
    assert exported(texts, truncation=True).input_ids == collator.tokenize(texts, 32)
    ids = exported("x").input_ids
    assert ids[0] != exported.bos_token_id and ids[-1] == exported.eos_token_id == exported.convert_tokens_to_ids(
        "<|im_end|>"
    )
    st_model = SentenceTransformer(str(out), device="cpu")
    torch.testing.assert_close(st_model.encode(texts, convert_to_tensor=True), reference, atol=1e-5, rtol=0)
    single = torch.stack([st_model.encode([t], convert_to_tensor=True)[0] for t in texts])
    torch.testing.assert_close(single, reference, atol=1e-5, rtol=0)
