"""Configuration of the training stage: model, data mixture and :class:`E5TrainingConfig`.

Everything is a dataclass read by ``HfArgumentParser`` from one YAML file (``recipes/train.py``); the YAML
keys equal the field names, and command-line flags override the YAML.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from transformers import TrainingArguments

from ..errors import E5MistralError
from ..instructions import TRAINING_INSTRUCTIONS
from ..options import option
from ..pooling import POOLING_MODES


BATCH_GROUPS = (None, "family", "task")
PAPER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class E5DatasetConfig:
    """One entry of ``dataset_mixture``: a dataset read with ``datasets.load_dataset`` and how to use it."""

    path: str
    name: str | None = None
    split: str = "train"
    data_dir: str | None = None
    data_files: Any = None
    sampling_ratio: float = 1.0
    # The instruction of rows that carry none: a text, a key of instructions.TRAINING_INSTRUCTIONS (e.g. "nli"), or a
    # list of them, one picked per row, seeded (the paper's two Table-14 instructions for NLI and Quora).
    instruction: str | list[str] | None = None
    # True / False for the whole entry, or per row: {family name or task text: bool, "*": the rest (default True)}
    in_batch_negatives: Any = True
    # With same_dataset_batches, what a global batch shares within this entry: the entry (null), "family" or "task"
    group_batches_by: str | None = None
    # Optional renames {source column: target column}, e.g. {anchor: query} for sentence-transformers datasets.
    columns: dict[str, str] | None = None
    # The instruction on documents too (positive and negatives), as symmetric tasks (STS, bitext) are evaluated: the
    # paper leaves documents bare, but scores STS with the instruction on both sides.
    instructed_documents: bool = False
    # False: queries bare too, the rows' instructions unused (an encoder such as all-MiniLM-L6-v2, trained and scored
    # without instructions).
    instructed_queries: bool = True

    def __post_init__(self):
        if not isinstance(self.path, str) or not self.path:
            raise E5MistralError("dataset_mixture: every entry needs a non-empty 'path'")
        if not isinstance(self.sampling_ratio, (int, float)) or self.sampling_ratio <= 0:
            raise E5MistralError(
                f"dataset_mixture: {self.path}: sampling_ratio must be a positive number, got {self.sampling_ratio!r}"
            )
        if self.instruction is not None:
            self.instruction = self._resolve_instructions(self.instruction)
        policy = self.in_batch_negatives
        if not isinstance(policy, bool) and not (
            isinstance(policy, dict) and all(isinstance(v, bool) for v in policy.values())
        ):
            raise E5MistralError(
                f"dataset_mixture: {self.path}: in_batch_negatives must be true, false or a mapping of family names "
                f'or task texts to true/false ("*" for the rest), got {policy!r}'
            )
        for name in ("instructed_documents", "instructed_queries"):
            if not isinstance(getattr(self, name), bool):
                raise E5MistralError(
                    f"dataset_mixture: {self.path}: {name} must be true or false, got {getattr(self, name)!r}"
                )
        if self.group_batches_by not in BATCH_GROUPS:
            raise E5MistralError(
                f"dataset_mixture: {self.path}: group_batches_by must be family or task (or left out), "
                f"got {self.group_batches_by!r}"
            )

    def _resolve_instructions(self, value) -> str | list[str]:
        """Keys of TRAINING_INSTRUCTIONS become their text; a list stays a list (one is picked per row)."""
        texts = value if isinstance(value, list) else [value]
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise E5MistralError(
                f"dataset_mixture: {self.path}: instruction must be a non-empty text or a list of them (leave it out "
                f"instead), got {value!r}"
            )
        resolved = [TRAINING_INSTRUCTIONS.get(t, t) for t in texts]
        return resolved if isinstance(value, list) else resolved[0]

    def instruction_for(self, row_index: int, seed: int) -> str | None:
        """The instruction of source row ``row_index``: the entry's, or one of its list picked by (seed, entry, row),
        so a rerun gives every row the same one."""
        if not isinstance(self.instruction, list):
            return self.instruction
        return random.Random(f"{seed}:{self.label}:{row_index}").choice(self.instruction)

    def uses_in_batch_negatives(self, family: str | None, task: str | None) -> bool:
        """A row's policy: its family's entry, else its task's, else ``"*"`` (default True)."""
        policy = self.in_batch_negatives
        if isinstance(policy, bool):
            return policy
        for key in (family, task, "*"):
            if key is not None and key in policy:
                return policy[key]
        return True

    @property
    def label(self) -> str:
        """A short name for error messages and the run metadata."""
        return self.path + (f" ({self.name})" if self.name else "") + f" [{self.split}]"


def _dataset_config(entry, number: int) -> "E5DatasetConfig":
    if not isinstance(entry, dict):
        return entry
    unknown = sorted(set(entry) - set(E5DatasetConfig.__dataclass_fields__))
    if unknown:
        raise E5MistralError(
            f"dataset_mixture entry {number}: unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(E5DatasetConfig.__dataclass_fields__)})"
        )
    return E5DatasetConfig(**entry)


@dataclass
class ModelArguments:
    """The backbone to train."""

    model_name_or_path: str | None = option("Hub id or local folder of the backbone (loaded with AutoModel).", None)
    tokenizer_name_or_path: str | None = option("Tokenizer, if not the model's own.", None)
    dtype: str = option("Weights dtype: auto, bfloat16, float16 or float32.", "auto")
    attn_implementation: str | None = option("sdpa, eager, flash_attention_2 (default: transformers' choice).", None)
    rope_theta: float | None = option("Train with this RoPE base (the paper extends the context 10^4 -> 10^5).", None)


@dataclass
class DataArguments:
    """The training mixture (paper App. A) and an optional held-out split for the evaluation loss."""

    dataset_mixture: list[E5DatasetConfig] = option(
        "List of datasets (path, name, split, sampling_ratio, instruction, in_batch_negatives, instructed_documents, columns); set it in the YAML.",
        default_factory=list,
    )
    eval_fraction: float | None = option("Hold out this fraction of the mixture for the evaluation loss.", None)
    dataset_num_proc: int | None = option("Processes for datasets.map.", None)

    def __post_init__(self):
        self.dataset_mixture = [_dataset_config(d, n) for n, d in enumerate(self.dataset_mixture)]
        if self.eval_fraction is not None and not 0 < self.eval_fraction < 1:
            raise E5MistralError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")


@dataclass
class E5TrainingConfig(TrainingArguments):
    """``TrainingArguments`` plus the paper's contrastive-training knobs.

    Parent defaults changed: ``remove_unused_columns=False`` (the collator needs the text columns),
    ``dataloader_drop_last=True`` (all processes must gather equal shapes), ``ddp_find_unused_parameters=False``,
    ``learning_rate=1e-4``, ``weight_decay=0.1``, ``logging_steps=10``, non-reentrant activation checkpointing.
    """

    # Embedding
    pooling: str = option("lasttoken (decoders, the paper), mean or cls (encoders).", "lasttoken")
    append_eos: bool | None = option("Append EOS to every text (default: True for lasttoken pooling).", None)
    max_seq_length: int = option("Maximum tokens per text, EOS included (paper: 512).", 512)
    query_max_length: int | None = option("Maximum tokens per query, if not max_seq_length.", None)
    # Loss
    temperature: float = option("InfoNCE temperature on cosine similarity (paper: 0.02).", 0.02)
    num_hard_negatives: int = option("Hard negatives per query (paper: 1); rows with fewer get masked slots.", 1)
    gather_across_devices: bool = option("Use the documents of every process as negatives.", True)
    mask_identical_negatives: bool = option("Drop candidates whose text equals the query's positive.", False)
    false_negative_margin: float | None = option(
        "Drop candidates scoring above the positive plus this cosine margin.", None
    )
    symmetric_loss: bool = option(
        "Average the query-to-document InfoNCE with its reverse: each positive against the batch's queries.", False
    )
    same_dataset_batches: bool = option(
        "Draw each global batch from a single dataset (or, where its mixture entry sets "
        "group_batches_by, from a single family or task of it).",
        False,
    )
    matryoshka_dims: list[int] | None = option(
        "Matryoshka: also train the first d dimensions of each embedding, renormalised, for each d "
        "(e.g. [4096, 1024, 256, 64]); the loss is their weighted sum. Unset: the full embedding only.",
        None,
    )
    matryoshka_weights: list[float] | None = option(
        "One loss weight per matryoshka_dims entry (default: 1 each).", None
    )
    gradcache_chunk_size: int | None = option(
        "GradCache: texts per forward chunk (memory grows with the chunk, not the batch).", None
    )
    length_groups: int = option(
        "Without GradCache: encode each step's queries and documents together, sorted by length, in this many forward passes, each padded only to its own longest text.",
        4,
    )
    # LoRA (paper / released adapter: r 16, alpha 32, dropout 0.1, all linear layers)
    use_lora: bool = option("Train a LoRA adapter (False: full fine-tuning).", True)
    lora_r: int = option("LoRA rank.", 16)
    lora_alpha: int = option("LoRA alpha.", 32)
    lora_dropout: float = option("LoRA dropout.", 0.1)
    lora_target_modules: list[str] = option(
        "Modules that get adapters.", default_factory=lambda: list(PAPER_LORA_TARGETS)
    )
    lora_layers_to_transform: list[int] | None = option(
        "Only these layer indices get adapters (default: all; the paper: all).", None
    )

    # Changed parent defaults
    remove_unused_columns: bool = option("Keep False: the collator reads the text columns.", False)
    dataloader_drop_last: bool = option("Keep True: every process gathers equal shapes.", True)
    ddp_find_unused_parameters: bool | None = option("DDP find_unused_parameters.", False)
    learning_rate: float = option("Peak learning rate (paper: 1e-4).", 1e-4)
    weight_decay: float = option("Weight decay (paper: 0.1).", 0.1)
    logging_steps: float = option("Log every N steps.", 10)

    def __post_init__(self):
        if self.pooling not in POOLING_MODES:
            raise E5MistralError(f"pooling must be one of {', '.join(POOLING_MODES)}, got {self.pooling!r}")
        if self.append_eos is None:
            self.append_eos = self.pooling == "lasttoken"
        if self.temperature <= 0:
            raise E5MistralError(f"temperature must be positive, got {self.temperature}")
        if self.max_seq_length < 2 or (self.query_max_length is not None and self.query_max_length < 2):
            raise E5MistralError("max_seq_length and query_max_length must be at least 2 (one token plus EOS)")
        if self.num_hard_negatives < 0:
            raise E5MistralError("num_hard_negatives must be >= 0")
        if self.gradcache_chunk_size is not None and self.gradcache_chunk_size < 1:
            raise E5MistralError("gradcache_chunk_size must be a positive integer")
        self._check_matryoshka()
        if self.length_groups < 1:
            raise E5MistralError(f"length_groups must be a positive integer, got {self.length_groups}")
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]
        checkpointing = self.activation_checkpointing or self.gradient_checkpointing
        if checkpointing and not (self.activation_checkpointing_kwargs or self.gradient_checkpointing_kwargs):
            # Reentrant checkpointing breaks LoRA gradients and DDP with several forwards per step.
            self.activation_checkpointing_kwargs = {"use_reentrant": False}
        super().__post_init__()

    def _check_matryoshka(self) -> None:
        dims, weights = self.matryoshka_dims, self.matryoshka_weights
        if dims is None:
            if weights is not None:
                raise E5MistralError("matryoshka_weights needs matryoshka_dims")
            return
        if not dims or any(int(d) != d or d < 1 for d in dims) or len(set(dims)) != len(dims):
            raise E5MistralError(f"matryoshka_dims must be distinct positive integers, got {dims}")
        if weights is not None and (len(weights) != len(dims) or any(w < 0 for w in weights)):
            raise E5MistralError(
                f"matryoshka_weights must give one non-negative weight per dimension ({len(dims)}), got {weights}"
            )

    @property
    def query_length(self) -> int:
        return self.query_max_length or self.max_seq_length
