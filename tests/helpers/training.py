"""Builders shared by the training tests: tiny synthetic datasets in the Hub layout, and YAML configs."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from e5_mistral.instructions import BITEXT_TASK, STS_TASK


FAMILY_KEYS = {
    "short_long": ["user_query", "positive_document", "hard_negative_document"],
    "long_short": ["input_text", "label", "misleading_label"],
    "short_short": ["input", "positive_document"],
    "long_long": ["input", "positive_document"],
    "sts": ["S1", "S2", "S3"],
    "bitext": ["S1", "S2", "S3"],
}
ALL_KEYS = sorted({k for keys in FAMILY_KEYS.values() for k in keys})

TOPICS = [
    ("rice", "cook the rice in boiling water"),
    ("fox", "the quick brown fox jumps"),
    ("guitar", "a man is playing a guitar"),
    ("onion", "a woman is slicing an onion"),
    ("dogs", "two dogs run across the field"),
    ("chat", "le chat est assis sur le tapis"),
    ("perro", "el perro come su comida"),
    ("hund", "der hund spielt im garten"),
    ("glucose", "photosynthesis stores energy in glucose"),
    ("market", "the stock market fell sharply"),
    ("rates", "the central bank raised interest rates"),
    ("tweet", "the sentiment of a given tweet"),
    ("light", "light energy into chemical energy"),
    ("garden", "spielt im garten der hund"),
    ("lazy", "over the lazy dog"),
    ("field", "across the field two dogs"),
]


def synthetic_row(family: str, i: int) -> dict:
    topic, text = TOPICS[i % len(TOPICS)]
    other = TOPICS[(i + 5) % len(TOPICS)][1]
    values = {
        "short_long": [f"{topic} {i}", text, other],
        "long_short": [text, topic, TOPICS[(i + 5) % len(TOPICS)][0]],
        "short_short": [topic, text],
        "long_long": [text + " " + topic, text],
        "sts": [text, text + " indeed", other],
        "bitext": [text, text.upper(), other],
    }[family]
    task = {"sts": STS_TASK, "bitext": BITEXT_TASK}.get(family, f"Given a {family} query, retrieve the matching text")
    row = {
        "request_id": f"{family}-{i}",
        "family": family,
        "task": task,
        "language": "English",
        "slots": {"language": "English"},
        "template_version": "test",
        "generator_model": "test",
    }
    row.update(dict(zip(FAMILY_KEYS[family], values)))
    return row


def write_synthetic_folder(root: Path, rows_per_family: int = 4, families=tuple(FAMILY_KEYS)) -> Path:
    """A folder in the synthesis stage's Hub layout: README.md with ``configs:`` and one sub-folder per config."""
    root.mkdir(parents=True, exist_ok=True)
    configs, all_rows = [], []
    for family in families:
        rows = [synthetic_row(family, i) for i in range(rows_per_family)]
        (root / family).mkdir(exist_ok=True)
        with open(root / family / "train.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        configs.append({"config_name": family, "data_files": [{"split": "train", "path": f"{family}/train.jsonl"}]})
        all_rows += [{**{k: None for k in ALL_KEYS}, **row} for row in rows]
    (root / "all").mkdir(exist_ok=True)
    with open(root / "all" / "train.jsonl", "w") as f:
        for row in all_rows:
            f.write(json.dumps(row) + "\n")
    configs.append({"config_name": "all", "data_files": [{"split": "train", "path": "all/train.jsonl"}]})
    (root / "README.md").write_text("---\n" + yaml.safe_dump({"configs": configs}) + "---\n# test data\n")
    return root


def write_labeled(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def tiny_config(model_dir, data_dir, output_dir, **overrides) -> dict:
    """A YAML-ready training config for the tiny model on a synthetic folder."""
    config = {
        "model_name_or_path": str(model_dir),
        "dataset_mixture": [{"path": str(data_dir), "name": "all", "split": "train"}],
        "output_dir": str(output_dir),
        "use_cpu": True,
        "per_device_train_batch_size": 8,
        "max_seq_length": 32,
        "max_steps": 6,
        "learning_rate": 5e-3,
        "warmup_steps": 0,
        "lr_scheduler_type": "constant",
        "weight_decay": 0.0,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    config.update(overrides)
    return config
