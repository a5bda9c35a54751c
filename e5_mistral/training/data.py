"""Load, validate and mix the training datasets into rows of (query, positive, negatives).

Two input formats, told apart by their columns:

* synthetic rows (a ``family`` column, the synthesis stage's schema): mapped by family as in paper §1.3,
  the row's ``task`` is the instruction;
* labeled rows: ``query``, ``positive``, optional ``negative`` (string or list of strings) and an optional
  per-row ``instruction``; otherwise the dataset's ``instruction`` from the YAML (paper Table 14).

Queries are formatted here with :func:`e5_mistral.instructions.format_query`; documents stay bare, unless the entry
sets ``instructed_documents`` (symmetric data, scored with the instruction on both sides).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import E5MistralError, MissingFileError
from ..families import FAMILY_SPECS
from ..instructions import format_query
from ..local_data import fresh_read_options
from .e5_config import E5DatasetConfig


logger = logging.getLogger(__name__)

# family -> (query, positive, hard negative or None), paper §1.3; from the family definitions.
FAMILY_FIELDS: dict[str, tuple[str, str, str | None]] = {name: spec.fields for name, spec in FAMILY_SPECS.items()}

TRAINING_COLUMNS = ("query", "positive", "negatives", "dataset_id", "in_batch_negatives", "batch_group")


@dataclass
class DatasetInfo:
    """What went into the mixture, for the run metadata (``e5_mistral_config.json``)."""

    path: str
    name: str | None
    split: str
    sampling_ratio: float
    instruction: str | None
    num_rows: int
    instructed_documents: bool = False
    instructed_queries: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _text(row: dict, field: str, where: str, required: bool = True) -> str | None:
    value = row.get(field)
    if value is None:
        if required:
            raise E5MistralError(f"{where}: field {field!r} is missing")
        return None
    if not isinstance(value, str):
        raise E5MistralError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise E5MistralError(f"{where}: field {field!r} is empty")
    return value


def convert_row(
    row: dict, config: E5DatasetConfig, row_index: int, num_hard_negatives: int, seed: int = 0
) -> dict[str, Any]:
    """One raw row -> ``{query, positive, negatives, family, task}``; a ValueError names the dataset, row and field.

    ``family`` and ``task`` (the instruction) are what per-family / per-task settings of the entry match."""
    where = f"dataset {config.label}, row {row_index}"
    # synthesis rows carry their family's keys; mined rows keep the family but are already (query, positive, negative)
    if row.get("family") is not None and row.get("query") is None:
        family = row["family"]
        if family not in FAMILY_FIELDS:
            raise E5MistralError(f"{where}: field 'family' is {family!r}, expected one of {', '.join(FAMILY_FIELDS)}")
        query_key, pos_key, neg_key = FAMILY_FIELDS[family]
        instruction = _text(row, "task", where)
        query = _text(row, query_key, where)
        positive = _text(row, pos_key, where)
        # a row may lack its negative (corpus-adapted rows written without one)
        negatives = [n for n in [_text(row, neg_key, where, required=False) if neg_key else None] if n]
    else:
        query = _text(row, "query", where)
        positive = _text(row, "positive", where)
        instruction = (
            _text(row, "instruction", where, required=False)
            if row.get("instruction") is not None
            else config.instruction_for(row_index, seed)
        )
        raw = row.get("negative")
        if raw is None:
            negatives = []
        elif isinstance(raw, str):
            negatives = [_text(row, "negative", where)]
        elif isinstance(raw, (list, tuple)):
            negatives = []
            for k, item in enumerate(raw):
                if not isinstance(item, str) or not item.strip():
                    raise E5MistralError(f"{where}: field 'negative'[{k}] must be a non-empty string")
                negatives.append(item)
        else:
            raise E5MistralError(
                f"{where}: field 'negative' must be a string or a list of strings, got {type(raw).__name__}"
            )
    family = row.get("family") if isinstance(row.get("family"), str) else None
    document_instruction = instruction if config.instructed_documents else None
    return {
        "query": format_query(instruction if config.instructed_queries else None, query),
        "positive": format_query(document_instruction, positive),
        "negatives": [format_query(document_instruction, text) for text in negatives[:num_hard_negatives]],
        "family": family,
        "task": instruction,
    }


def batch_group(dataset_id: int, config: E5DatasetConfig, family: str | None, task: str | None) -> int:
    """The group a row's global batch is drawn from under ``same_dataset_batches``: its mixture entry, or the
    entry's family or task (``group_batches_by``). A hash, so every process and ``datasets.map`` worker agrees."""
    if config.group_batches_by is None:
        return dataset_id
    key = family if config.group_batches_by == "family" else task
    digest = hashlib.sha256(f"{dataset_id}\x1f{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:7], "big")  # fits int64


def _load(config: E5DatasetConfig, refresh_local: bool = True):
    from datasets import load_dataset

    fresh = fresh_read_options(config.path, config.data_files, refresh=refresh_local)
    try:
        dataset = load_dataset(
            config.path,
            config.name,
            split=config.split,
            data_dir=config.data_dir,
            data_files=config.data_files,
            **fresh,
        )
    except FileNotFoundError as err:
        raise MissingFileError(f"dataset {config.label}: {err}") from err
    if config.columns:
        missing = [c for c in config.columns if c not in dataset.column_names]
        if missing:
            raise E5MistralError(
                f"dataset {config.label}: columns to rename not found: {', '.join(missing)} (has {', '.join(dataset.column_names)})"
            )
        dataset = dataset.rename_columns(dict(config.columns))
    return dataset


def sample_indices(num_rows: int, ratio: float, seed: int) -> list[int]:
    """``round(ratio * num_rows)`` indices: a seeded subset for ratio < 1, whole repeats plus a subset above 1."""
    import numpy as np

    rng = np.random.default_rng(seed)
    target = int(round(ratio * num_rows))
    whole, rest = divmod(target, num_rows) if num_rows else (0, 0)
    indices = list(range(num_rows)) * whole + rng.permutation(num_rows)[:rest].tolist()
    return sorted(indices) if ratio <= 1 else indices


def build_mixture(
    configs: Sequence[E5DatasetConfig],
    num_hard_negatives: int = 1,
    seed: int = 42,
    num_proc: int | None = None,
    refresh_local: bool = True,
):
    """Load, sample (``sampling_ratio``), validate and concatenate the mixture.

    ``refresh_local`` rebuilds the datasets cache of local data (set it on one process per machine only).

    Returns ``(dataset, infos)``; the dataset has the columns ``query, positive, negatives, dataset_id,
    in_batch_negatives, batch_group`` (the last two per row: an entry's settings may differ by family or task).
    Every sampled row is validated before training starts.
    """
    from datasets import Features, Value, concatenate_datasets
    from datasets import Sequence as HFSequence

    if not configs:
        raise E5MistralError("dataset_mixture is empty: list at least one dataset in the YAML")
    features = Features(
        {
            "query": Value("string"),
            "positive": Value("string"),
            "negatives": HFSequence(Value("string")),
            "dataset_id": Value("int32"),
            "in_batch_negatives": Value("bool"),
            "batch_group": Value("int64"),
        }
    )
    parts, infos = [], []
    for dataset_id, config in enumerate(configs):
        raw = _load(config, refresh_local)
        indices = sample_indices(len(raw), config.sampling_ratio, seed + dataset_id)
        if not indices:
            raise E5MistralError(
                f"dataset {config.label}: no rows left after sampling_ratio={config.sampling_ratio} ({len(raw)} rows)"
            )
        raw = raw.select(indices)

        def convert(batch, idx, config=config, dataset_id=dataset_id, indices=indices):
            rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
            out = [convert_row(r, config, indices[i], num_hard_negatives, seed) for r, i in zip(rows, idx)]
            return {
                "query": [o["query"] for o in out],
                "positive": [o["positive"] for o in out],
                "negatives": [o["negatives"] for o in out],
                "dataset_id": [dataset_id] * len(out),
                "in_batch_negatives": [config.uses_in_batch_negatives(o["family"], o["task"]) for o in out],
                "batch_group": [batch_group(dataset_id, config, o["family"], o["task"]) for o in out],
            }

        converted = raw.map(
            convert,
            batched=True,
            with_indices=True,
            remove_columns=raw.column_names,
            features=features,
            num_proc=num_proc,
            desc=f"Preparing {config.label}",
        )
        parts.append(converted)
        infos.append(
            DatasetInfo(
                config.path,
                config.name,
                config.split,
                float(config.sampling_ratio),
                config.instruction,
                len(converted),
                config.instructed_documents,
                config.instructed_queries,
            )
        )
        logger.info("dataset %s: %d rows after sampling ratio %s", config.label, len(converted), config.sampling_ratio)
    return concatenate_datasets(parts), infos


def same_dataset_order(dataset_ids: Sequence[int], global_batch_size: int, seed: int) -> list[int]:
    """An index order in which every run of ``global_batch_size`` indices comes from one dataset (or batch group:
    any ids work).

    Incomplete tail batches of each group are dropped, and the count is logged; when that would drop most rows,
    it is an error with the numbers. Batches of different groups are interleaved at random.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    by_dataset: dict[int, list[int]] = {}
    for index, dataset_id in enumerate(dataset_ids):
        by_dataset.setdefault(int(dataset_id), []).append(index)
    batches = []
    for dataset_id in sorted(by_dataset):
        members = rng.permutation(by_dataset[dataset_id]).tolist()
        usable = (len(members) // global_batch_size) * global_batch_size
        batches += [members[i : i + global_batch_size] for i in range(0, usable, global_batch_size)]
    dropped = len(dataset_ids) - len(batches) * global_batch_size
    where = (
        f"same_dataset_batches: {dropped} of {len(dataset_ids)} rows fall in the incomplete last batches of "
        f"{len(by_dataset)} batch groups (global batch {global_batch_size})"
    )
    if dropped * 2 > len(dataset_ids):
        raise E5MistralError(
            f"{where} and would not be trained on; group by family rather than task (group_batches_by), use a "
            "smaller batch, or turn same_dataset_batches off"
        )
    if dropped:
        logger.warning("%s and are not trained on in this pass", where)
    order = rng.permutation(len(batches))
    return [index for b in order for index in batches[b]]
