"""What `mine` and `filter` read: a Hub id, a folder in the Hub layout (a synthesis or adapt output, or its dataset/),
or a JSON Lines file; rows of the six families or labeled rows (query, positive, negative, instruction)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import E5MistralError, MissingFileError
from ..families import FAMILY_SPECS
from ..hub.schema import check_row
from ..llm.settings import check_json_object
from ..local_data import fresh_read_options
from ..options import option


@dataclass
class DatasetInput:
    """The input options of a command that reads a dataset of training pairs."""

    dataset: Optional[str] = option(
        "Hub id, a local folder in the Hub layout, a synthesis or adapt output folder, or a JSON Lines file (on the "
        "command line also as the first argument)",
        None,
    )
    configs: Optional[list[str]] = option(
        "configs to read (default: every config; for synthesis output, the six families, and `all` is rebuilt)", None
    )
    split: str = option("split to read", "train")
    instruction: Optional[str] = option("instruction for labeled rows that carry none", None)
    columns: Optional[str] = option(
        'JSON object renaming input columns, e.g. {"question": "query", "answer": "positive"}', None
    )

    def __post_init__(self):
        if self.columns is not None:
            check_json_object("--columns", self.columns)


def dataset_source(dataset: str) -> tuple[str, str | None]:
    """(what load_dataset takes, data file or None): a synthesis output's dataset/ folder, a folder, a file, an id."""
    path = Path(dataset)
    if path.is_file():
        return "json", str(path)
    if path.is_dir():
        return (str(path / "dataset") if (path / "dataset" / "README.md").is_file() else str(path)), None
    if path.suffix in (".jsonl", ".json") or dataset.startswith((".", "/", "~")):
        raise MissingFileError(f"dataset {dataset} not found")
    return dataset, None  # a Hub id


def input_configs(args: DatasetInput) -> list[str]:
    from datasets import get_dataset_config_names

    source, data_file = dataset_source(args.dataset)
    if data_file is not None:
        return ["default"]
    names = list(get_dataset_config_names(source))
    if args.configs:
        unknown = [c for c in args.configs if c not in names]
        if unknown:
            raise E5MistralError(f"{args.dataset} has no config {', '.join(unknown)} (it has {', '.join(names)})")
        return list(args.configs)
    if set(FAMILY_SPECS) <= set(names):  # synthesis layout: `all` is the union of the families, rebuilt after
        return [n for n in names if n != "all"]
    return names


def load_rows(args: DatasetInput, config: str) -> list[dict]:
    """The rows of one config (none for a local config without rows, which ``datasets`` refuses to load)."""
    from datasets import load_dataset

    source, data_file = dataset_source(args.dataset)
    if _empty(source, data_file, config):
        return []
    if data_file is not None:
        dataset = load_dataset("json", data_files=data_file, split="train", **fresh_read_options(data_file))
    else:
        dataset = load_dataset(source, config, split=args.split, **fresh_read_options(source))
    if args.columns:
        mapping = json.loads(args.columns)
        missing = [c for c in mapping if c not in dataset.column_names]
        if missing:
            raise E5MistralError(
                f"{args.dataset}: columns to rename not found: {', '.join(missing)} "
                f"(has {', '.join(dataset.column_names)})"
            )
        dataset = dataset.rename_columns(mapping)
    return dataset.to_list()


def _text(row: dict, key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        problem = (
            "is missing" if value is None else "is empty" if isinstance(value, str) else f"is a {type(value).__name__}"
        )
        raise E5MistralError(f"{where}: field {key!r} {problem}, expected a non-empty string")
    return value


def training_pair(row: dict, where: str, default_instruction: str | None) -> dict:
    """(query, positive, own negatives, instruction, family) of a synthesis row or a labeled row."""
    family = row.get("family")
    if family is not None and row.get("query") is None:
        if family not in FAMILY_SPECS:
            raise E5MistralError(f"{where}: field 'family' is {family!r}, expected one of {', '.join(FAMILY_SPECS)}")
        query_key, positive_key, negative_key = FAMILY_SPECS[family].fields
        # a row may lack its negative (written by `e5-mistral adapt --negatives none`)
        negatives = [_text(row, negative_key, where)] if negative_key and row.get(negative_key) is not None else []
        return {
            "query": _text(row, query_key, where),
            "positive": _text(row, positive_key, where),
            "negatives": negatives,
            "instruction": _text(row, "task", where),
            "family": family,
        }
    raw = row.get("negative")
    negatives = [] if raw is None else [raw] if isinstance(raw, str) else list(raw)
    for k, negative in enumerate(negatives):
        if not isinstance(negative, str) or not negative.strip():
            raise E5MistralError(f"{where}: field 'negative'[{k}] must be a non-empty string")
    return {
        "query": _text(row, "query", where),
        "positive": _text(row, "positive", where),
        "negatives": negatives,
        "instruction": row.get("instruction") or default_instruction,
        "family": family,
    }


def read_corpus(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise MissingFileError(f"corpus file {path} not found")
    lines = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if file.suffix != ".jsonl":
        return lines
    texts = []
    for number, line in enumerate(lines, start=1):
        try:
            texts.append(_text(json.loads(line), "text", f"{path}, line {number}"))
        except json.JSONDecodeError as err:
            raise E5MistralError(f"{path}, line {number}: not JSON ({err})") from None
    return texts


def _empty(source: str, data_file: str | None, config: str) -> bool:
    """Whether a local Hub-layout config holds no rows (read from its parquet footers)."""
    import pyarrow.parquet as pq

    files = list((Path(source) / config).glob("*.parquet")) if data_file is None and Path(source).is_dir() else []
    return bool(files) and not any(pq.ParquetFile(f).metadata.num_rows for f in files)


def family_row(row: dict, where: str, default_instruction: str | None) -> dict:
    """``row`` as a row of a family, which the Hub-layout writer takes: a schema row as it is; a labeled row (query,
    positive, negative, instruction) as a row of its ``family``, or of short_long when it names none."""
    if row.get("family") is not None and row.get("query") is None:  # a row of the schema
        check_row(row, where)
        return row
    pair = training_pair(row, where, default_instruction)
    spec = FAMILY_SPECS.get(pair["family"] or "short_long")
    if spec is None:
        raise E5MistralError(
            f"{where}: field 'family' is {pair['family']!r}, expected one of {', '.join(FAMILY_SPECS)}"
        )
    if spec.brainstorms and not pair["instruction"]:
        raise E5MistralError(f"{where}: a labeled row needs field 'instruction' (or give --instruction)")
    query_key, positive_key, negative_key = spec.fields
    out = {"family": spec.name, "task": pair["instruction"] if spec.brainstorms else spec.fixed_task}
    out.update({query_key: pair["query"], positive_key: pair["positive"]})
    if negative_key and pair["negatives"]:
        out[negative_key] = pair["negatives"][0]  # the schema holds one negative a row
    return out
