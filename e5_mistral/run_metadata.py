"""The training -> export contract: ``e5_mistral_config.json``, written by the trainer beside the weights.

One dataclass: :class:`RunMetadata`. The trainer writes it (``E5Trainer.e5_config``), the export stage reads and
validates it (:meth:`RunMetadata.from_file`), and the model card iterates its fields.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import E5MistralError
from .pooling import POOLING_MODES


RUN_METADATA_FILE = "e5_mistral_config.json"


@dataclass
class TrainingHyperparameters:
    """The training run's hyper-parameters, as the model card lists them (None: not recorded)."""

    learning_rate: float | None = None
    per_device_train_batch_size: int | None = None
    # The contrastive batch: every process's documents are negatives; gradient accumulation adds none.
    global_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    gradcache_chunk_size: int | None = None
    num_train_epochs: float | None = None
    max_steps: int | None = None
    warmup_steps: int | None = None
    weight_decay: float | None = None
    lr_scheduler_type: str | None = None
    world_size: int | None = None
    seed: int | None = None
    bf16: bool | None = None
    fp16: bool | None = None

    @classmethod
    def from_training_args(cls, args) -> "TrainingHyperparameters":
        """From a ``TrainingArguments`` (or the project's subclass)."""
        return cls(
            learning_rate=args.learning_rate,
            per_device_train_batch_size=args.per_device_train_batch_size,
            global_batch_size=args.per_device_train_batch_size * args.world_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            gradcache_chunk_size=getattr(args, "gradcache_chunk_size", None),
            num_train_epochs=args.num_train_epochs,
            max_steps=args.max_steps,
            warmup_steps=args.warmup_steps,
            weight_decay=args.weight_decay,
            lr_scheduler_type=str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            world_size=args.world_size,
            seed=args.seed,
            bf16=bool(args.bf16),
            fp16=bool(args.fp16),
        )

    @classmethod
    def from_dict(cls, raw: dict) -> "TrainingHyperparameters":
        known = {spec.name for spec in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def recorded(self) -> dict[str, Any]:
        """The hyper-parameters that were recorded, in declaration order."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class RunMetadata:
    """What a training run tells the export (defaults when a key or the whole file is missing)."""

    base_model_name_or_path: str | None = None
    pooling: str = "lasttoken"
    normalize: bool = True
    append_eos: bool = True
    max_seq_length: int = 512
    query_max_length: int | None = None
    temperature: float | None = None
    matryoshka_dims: list[int] | None = None  # sizes trained to work truncated (the first d dimensions)
    rope_theta: float | None = None  # the RoPE base trained at, when not the backbone's own
    instructed_queries: bool = True  # False: trained on bare queries (no instruction prompts on export)
    lora: dict[str, Any] | None = None
    datasets: list[dict[str, Any]] = field(default_factory=list)
    training: TrainingHyperparameters = field(default_factory=TrainingHyperparameters)
    versions: dict[str, Any] = field(default_factory=dict)
    merged: dict[str, Any] | None = None  # set by `e5-mistral merge`: the checkpoints, weights and method

    def __post_init__(self):
        if self.pooling not in POOLING_MODES:
            raise E5MistralError(f"field 'pooling' is {self.pooling!r}; expected one of {', '.join(POOLING_MODES)}")
        if not isinstance(self.max_seq_length, int) or self.max_seq_length < 2:
            raise E5MistralError(f"field 'max_seq_length' must be an integer >= 2, got {self.max_seq_length!r}")
        if not isinstance(self.datasets, list):
            raise E5MistralError("field 'datasets' must be a list")
        if isinstance(self.training, dict):  # as read from the file
            self.training = TrainingHyperparameters.from_dict(self.training)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / RUN_METADATA_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_file(cls, path: Path | None) -> "RunMetadata":
        if path is None:
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise E5MistralError(f"{path} is not valid JSON: {err}") from err
        if not isinstance(raw, dict):
            raise E5MistralError(f"{path} must hold a JSON object, not {type(raw).__name__}")
        try:
            return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__ and v is not None})
        except E5MistralError as err:
            raise E5MistralError(f"{path}: {err}") from None
