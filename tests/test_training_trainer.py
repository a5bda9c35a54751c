"""E5Trainer on the tiny model: GradCache gradients, checkpoints and their metadata, resume, eval, the recipe parser."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from e5_mistral.run_metadata import TrainingHyperparameters
from e5_mistral.training.e5_config import DataArguments, E5TrainingConfig, ModelArguments
from e5_mistral.training.gradcache import RandContext
from e5_mistral.training.run import parse_args, train
from tests.helpers.training import tiny_config, write_labeled, write_synthetic_folder, write_yaml


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic_folder(tmp_path_factory.mktemp("synthetic"), rows_per_family=4)


def make_trainer(model_dir, data_dir, output_dir, **overrides):
    from e5_mistral.training.data import build_mixture
    from e5_mistral.training.e5_trainer import E5Trainer
    from e5_mistral.training.model import load_backbone, load_tokenizer

    model_args, data_args, args = parse_args(
        [
            "--config",
            str(
                write_yaml(
                    Path(output_dir).with_suffix(".yaml"), tiny_config(model_dir, data_dir, output_dir, **overrides)
                )
            ),
        ]
    )
    tokenizer = load_tokenizer(model_args)
    dataset, infos = build_mixture(data_args.dataset_mixture, num_hard_negatives=args.num_hard_negatives)
    torch.manual_seed(0)
    model = load_backbone(model_args, args, tokenizer)
    return E5Trainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, dataset_infos=infos)


def grads_of_one_step(trainer, batch):
    trainer.model.zero_grad(set_to_none=True)
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer.training_step(trainer.model, batch)
    return loss, {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("use_lora,matryoshka", [(False, False), (True, False), (True, True)])
def test_gradcache_gradients_equal_uncached(tiny_model_dir, data_dir, tmp_path, use_lora, matryoshka):
    trainer = make_trainer(
        tiny_model_dir,
        data_dir,
        tmp_path / "gc",
        use_lora=use_lora,
        per_device_train_batch_size=12,
        num_hard_negatives=1,
        max_seq_length=48,
        **({"matryoshka_dims": [32, 8, 4], "matryoshka_weights": [1.0, 0.5, 0.5]} if matryoshka else {}),
    )
    if use_lora:  # LoRA B starts at zero, which would leave A without gradient: make both non-trivial
        with torch.no_grad():
            for name, p in trainer.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    loss, grads = grads_of_one_step(trainer, batch)
    trainer.args.gradcache_chunk_size = 5  # chunks of 5 over 12 queries and 24 documents
    cached_loss, cached = grads_of_one_step(trainer, batch)
    torch.testing.assert_close(cached_loss, loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == cached.keys() and len(grads) > 0
    for name in grads:
        assert grads[name].abs().max() > 0, name
        torch.testing.assert_close(cached[name], grads[name], rtol=1e-5, atol=1e-5 * grads[name].abs().max().item())
    # Relative error of the whole gradient.
    flat, flat_cached = (
        torch.cat([g.flatten() for g in grads.values()]),
        torch.cat([g.flatten() for g in cached.values()]),
    )
    assert ((flat_cached - flat).norm() / flat.norm()).item() < 1e-5


def test_rng_replay_reproduces_dropout():
    x = torch.ones(1000)
    state = RandContext(torch.device("cpu"))
    first = torch.nn.functional.dropout(x, 0.5)
    after = torch.rand(3)
    with state.replay():
        again = torch.nn.functional.dropout(x, 0.5)
    assert torch.equal(first, again)
    torch.manual_seed(1234)
    # Replay leaves the caller's RNG stream where it was.
    expected = torch.rand(3)
    torch.manual_seed(1234)
    with state.replay():
        torch.rand(5)
    assert torch.equal(torch.rand(3), expected) and not torch.equal(after, expected)


CONTRACT_KEYS = {
    "base_model_name_or_path",
    "pooling",
    "normalize",
    "append_eos",
    "max_seq_length",
    "query_max_length",
    "temperature",
    "lora",
    "datasets",
    "training",
    "versions",
}
TRAINING_KEYS = {spec.name for spec in dataclasses.fields(TrainingHyperparameters)}


@pytest.mark.slow
def test_checkpoints_resume_and_eval(tiny_model_dir, data_dir, tmp_path):
    """An uninterrupted run and a run resumed from its step-3 checkpoint end with the same adapter weights."""
    common = dict(
        max_steps=6,
        save_strategy="steps",
        save_steps=3,
        lora_dropout=0.1,
        per_device_train_batch_size=4,
        eval_strategy="steps",
        eval_steps=3,
        per_device_eval_batch_size=4,
    )
    cfg = write_yaml(tmp_path / "run.yaml", tiny_config(tiny_model_dir, data_dir, tmp_path / "ignored", **common))
    # Command-line flags override the YAML (output_dir here).
    full = train(*parse_args([str(cfg), "--output_dir", str(tmp_path / "full"), "--eval_fraction", "0.25"]))
    out = tmp_path / "full"
    assert full.args.output_dir == str(out)
    ckpt = out / "checkpoint-3"
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "e5_mistral_config.json",
    ):
        assert (ckpt / name).is_file(), name
    adapter = json.loads((ckpt / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_model_dir) and adapter["r"] == 8
    meta = json.loads((out / "e5_mistral_config.json").read_text())
    assert CONTRACT_KEYS <= meta.keys() and TRAINING_KEYS <= meta["training"].keys()
    assert meta["pooling"] == "lasttoken" and meta["append_eos"] is True and meta["temperature"] == 0.02
    assert meta["lora"]["r"] == 8 and set(meta["lora"]["target_modules"]) >= {"q_proj", "down_proj"}
    assert meta["datasets"] == [
        {
            "path": str(data_dir),
            "name": "all",
            "split": "train",
            "sampling_ratio": 1.0,
            "instruction": None,
            "num_rows": 24,
            "instructed_documents": False,
            "instructed_queries": True,
        }
    ]
    assert meta["training"]["world_size"] == 1 and meta["training"]["global_batch_size"] == 4
    assert any("eval_loss" in h for h in full.state.log_history)

    resumed = train(
        *parse_args(
            [
                str(cfg),
                "--output_dir",
                str(tmp_path / "resumed"),
                "--eval_fraction",
                "0.25",
                "--resume_from_checkpoint",
                str(ckpt),
            ]
        )
    )
    assert resumed.state.global_step == 6
    want = load_file(out / "adapter_model.safetensors")
    got = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
    changed = load_file(ckpt / "adapter_model.safetensors")
    assert any(not torch.equal(changed[k], want[k]) for k in want)  # steps 4-6 did train


def test_full_finetuning_checkpoint(tiny_model_dir, data_dir, tmp_path):
    args = parse_args(
        [
            "--config",
            str(
                write_yaml(
                    tmp_path / "c.yaml",
                    tiny_config(tiny_model_dir, data_dir, tmp_path / "out", use_lora=False, max_steps=1),
                )
            ),
        ]
    )
    train(*args)
    assert (tmp_path / "out" / "config.json").is_file() and (tmp_path / "out" / "model.safetensors").is_file()
    assert not (tmp_path / "out" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "out" / "e5_mistral_config.json").read_text())["lora"] is None


def test_bad_row_fails_before_training(tiny_model_dir, tmp_path):
    data = write_labeled(tmp_path / "bad.jsonl", [{"query": "q", "positive": "p"}, {"query": "q", "positive": ""}])
    cfg = tiny_config(tiny_model_dir, tmp_path, tmp_path / "out")
    cfg["dataset_mixture"] = [{"path": "json", "data_files": str(data), "instruction": "t"}]
    path = write_yaml(tmp_path / "c.yaml", cfg)
    proc = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "train.py"), str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "row 1: field 'positive' is empty" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_parser_rejects_unknown_yaml_keys_and_reads_mixture(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"model_name_or_path": "m", "output_dir": str(tmp_path), "no_such_key": 1})
    with pytest.raises(ValueError, match="no_such_key"):
        parse_args([str(path)])
    path = write_yaml(
        tmp_path / "d.yaml",
        {
            "model_name_or_path": "m",
            "output_dir": str(tmp_path),
            "temperature": 0.05,
            "dataset_mixture": [{"path": "a", "sampling_ratio": 0.5, "instruction": "x"}],
        },
    )
    model_args, data_args, args = parse_args([str(path), "--temperature", "0.02", "--lora_r", "4"])
    assert (
        isinstance(model_args, ModelArguments)
        and isinstance(data_args, DataArguments)
        and isinstance(args, E5TrainingConfig)
    )
    assert args.temperature == 0.02 and args.lora_r == 4 and data_args.dataset_mixture[0].sampling_ratio == 0.5
    assert args.remove_unused_columns is False and args.dataloader_drop_last is True


def test_same_dataset_batches_sampler(tiny_model_dir, data_dir, tmp_path):
    trainer = make_trainer(
        tiny_model_dir,
        data_dir,
        tmp_path / "same",
        same_dataset_batches=True,
        per_device_train_batch_size=2,
        dataset_mixture=[
            {"path": str(data_dir), "name": "short_long"},
            {"path": str(data_dir), "name": "sts"},
            {"path": str(data_dir), "name": "bitext"},
        ],
    )
    ids = trainer.train_dataset["dataset_id"]
    order = list(trainer._get_train_sampler())
    assert sorted(order) == list(range(12))
    assert all(len({ids[i] for i in order[s : s + 2]}) == 1 for s in range(0, 12, 2))
    assert len({ids[order[s]] for s in range(0, 12, 2)}) == 3
