"""mteb tasks read from local folders (the simple formats of ``../shared/benchmarks/README.md``).

A folder ``DIR/X/`` becomes an mteb task named ``X`` whose type is recognised from the files and fields
present, so mteb's own evaluators score it. When ``X`` is also the name of a real mteb task of the same
type, that task's class is used (its metadata, main score and evaluation protocol, e.g. the classification
``samples_per_label``/``n_experiments``) with the local data put in place of the Hub download.

| type | files | fields |
| --- | --- | --- |
| Retrieval | ``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv`` | ``_id``, ``title``, ``text`` / ``_id``, ``text`` / ``query-id corpus-id score`` |
| STS | ``test.jsonl`` (or ``full.jsonl``, preferred) | ``sentence1``, ``sentence2``, ``score`` |
| PairClassification | ``test.jsonl`` | ``sentence1``, ``sentence2``, ``label`` (0/1) |
| BitextMining | ``test.jsonl`` | ``source``, ``target`` (+ ``source_lang``, ``target_lang``: one subset per pair) |
| Classification | ``train.jsonl`` + ``test.jsonl`` | ``text``, ``label`` |

A folder whose sub-folders each hold one of these formats is one task with a subset per sub-folder.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from ..compat import load_task_data
from ..errors import E5MistralError, MissingFileError
from ..local_data import read_jsonl


logger = logging.getLogger(__name__)

SPLIT = "test"
# Shown in errors for folders that match no format.
EXPECTED = (
    "corpus.jsonl + queries.jsonl + qrels/test.tsv (retrieval), test.jsonl with sentence1/sentence2/score (STS) "
    "or sentence1/sentence2/label (pair classification) or source/target (bitext mining), "
    "train.jsonl + test.jsonl with text/label (classification), or sub-folders holding one of these"
)
MAIN_SCORES = {
    "Retrieval": "ndcg_at_10",
    "STS": "cosine_spearman",
    "PairClassification": "max_ap",
    "BitextMining": "f1",
    "Classification": "accuracy",
}
TASK_FILE = "task.json"  # optional, beside the data: {"main_score": ...}
# Documents kept per query when a retrieval corpus is subsampled (besides the relevant ones).
CORPUS_SAMPLE_PER_QUERY = 10


def _first_fields(path: Path) -> set[str]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise E5MistralError(f"{path}: first line is not valid JSON ({err.msg})") from None
                return set(row) if isinstance(row, dict) else set()
    return set()


def _sts_file(folder: Path) -> Path:
    # SICK-R: mteb's evaluation set is all 9,927 pairs, kept as full.jsonl beside the official test part.
    return folder / "full.jsonl" if (folder / "full.jsonl").is_file() else folder / "test.jsonl"


def detect_type(folder: Path) -> str | None:
    """The mteb task type of one folder's files, or None when they match no known format."""
    if (folder / "corpus.jsonl").is_file() and (folder / "queries.jsonl").is_file() and (folder / "qrels").is_dir():
        return "Retrieval"
    if not (folder / "test.jsonl").is_file():
        return None
    fields = _first_fields(folder / "test.jsonl")
    if (folder / "train.jsonl").is_file() and {"text", "label"} <= fields:
        return "Classification"
    if {"sentence1", "sentence2", "score"} <= fields:
        return "STS"
    if {"sentence1", "sentence2", "label"} <= fields:
        return "PairClassification"
    if {"source", "target"} <= fields:
        return "BitextMining"
    return None


def folder_task_type(folder: str | Path) -> str:
    """The mteb task type of a task folder, its files or its subsets' (e.g. ``AmazonCounterfactual/en``)."""
    return _layout(Path(folder))[0]


def _layout(folder: Path) -> tuple[str, dict[str, Path]]:
    """(task type, {subset: folder}) for a task folder, looking one level down for subsets."""
    if not folder.is_dir():
        raise MissingFileError(f"no offline task folder {folder}")
    task_type = detect_type(folder)
    if task_type is not None:
        return task_type, {"default": folder}
    subsets = {sub.name: sub for sub in sorted(folder.iterdir()) if sub.is_dir() and not sub.name.startswith(".")}
    types = {name: detect_type(sub) for name, sub in subsets.items()}
    found = {t for t in types.values() if t is not None}
    if not found:
        raise E5MistralError(f"{folder} matches no task format; expected {EXPECTED}")
    if len(found) > 1:
        raise E5MistralError(f"{folder} mixes task formats in its sub-folders: {sorted(found)}")
    return found.pop(), {name: sub for name, sub in subsets.items() if types[name] is not None}


def _take(rows: list, max_rows: int | None) -> list:
    """A deterministic sample of at most ``max_rows`` rows, spread over the file (files are often sorted by label)."""
    if max_rows is None or len(rows) <= max_rows:
        return rows
    step = len(rows) / max_rows
    return [rows[int(i * step)] for i in range(max_rows)]


def _require(rows: list[dict], fields: tuple[str, ...], path: Path) -> None:
    for number, row in enumerate(rows, 1):
        missing = [f for f in fields if row.get(f) is None]
        if missing:
            raise E5MistralError(f"{path}: row {number} lacks field(s) {', '.join(missing)}")


def _pairs(path: Path, columns: dict[str, str], value: str, max_rows: int | None, cast):
    from datasets import Dataset

    rows = read_jsonl(path)
    _require(rows, (*columns, value), path)
    rows = _take(rows, max_rows)
    data = {target: [str(r[source]) for r in rows] for source, target in columns.items()}
    try:
        return Dataset.from_dict({**data, "__value__": [cast(r[value]) for r in rows]})
    except (TypeError, ValueError) as err:
        raise E5MistralError(f"{path}: field {value!r} must be a number ({err})") from None


def _load_retrieval(
    folder: Path, max_rows: int | None, corpus_per_query: int = CORPUS_SAMPLE_PER_QUERY
) -> dict[str, Any]:
    from datasets import Dataset

    qrels_path = folder / "qrels" / f"{SPLIT}.tsv"
    if not qrels_path.is_file():
        raise MissingFileError(f"{qrels_path} is missing (retrieval qrels of the {SPLIT} split)")
    relevant: dict[str, dict[str, int]] = {}
    with open(qrels_path, encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t"), 1):
            if not row or (number == 1 and row[0] == "query-id"):
                continue
            if len(row) < 3:
                raise E5MistralError(f"{qrels_path}: line {number} needs query-id, corpus-id and score")
            try:
                relevant.setdefault(row[0], {})[row[1]] = int(float(row[2]))
            except ValueError:
                raise E5MistralError(f"{qrels_path}: line {number} has a non-numeric score {row[2]!r}") from None
    queries = read_jsonl(folder / "queries.jsonl")
    _require(queries, ("_id", "text"), folder / "queries.jsonl")
    queries = [q for q in queries if str(q["_id"]) in relevant]  # as mteb: queries without qrels are dropped
    if not queries:
        raise E5MistralError(f"{folder}: no query of queries.jsonl has a judgement in {qrels_path}")
    corpus = read_jsonl(folder / "corpus.jsonl")
    _require(corpus, ("_id", "text"), folder / "corpus.jsonl")
    if max_rows is not None and len(queries) > max_rows:
        queries = queries[:max_rows]
        keep_relevant = {doc for q in queries for doc in relevant[str(q["_id"])]}
        others = [d for d in corpus if str(d["_id"]) not in keep_relevant][: max_rows * corpus_per_query]
        keep = keep_relevant | {str(d["_id"]) for d in others}
        corpus = [d for d in corpus if str(d["_id"]) in keep]
    query_ids = [str(q["_id"]) for q in queries]
    return {
        "corpus": Dataset.from_dict(
            {
                "id": [str(d["_id"]) for d in corpus],
                "title": [str(d.get("title") or "") for d in corpus],
                "text": [str(d["text"]) for d in corpus],
            }
        ),
        "queries": Dataset.from_dict({"id": query_ids, "text": [str(q["text"]) for q in queries]}),
        "relevant_docs": {qid: relevant[qid] for qid in query_ids},
        "top_ranked": None,
    }


def _load_bitext(path: Path, max_rows: int | None) -> dict[str, Any]:
    """{subset: Dataset(sentence1, sentence2)}; one subset per (source_lang, target_lang) when given."""
    from datasets import Dataset

    rows = read_jsonl(path)
    _require(rows, ("source", "target"), path)
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("source_lang") and row.get("target_lang"):
            key = f"{row['source_lang']}-{row['target_lang']}"
        else:
            key = "default"
        groups.setdefault(key, []).append(row)
    return {
        key: Dataset.from_dict(
            {
                "sentence1": [str(r["source"]) for r in _take(g, max_rows)],
                "sentence2": [str(r["target"]) for r in _take(g, max_rows)],
            }
        )
        for key, g in groups.items()
    }


def _load_classification(folder: Path, max_rows: int | None):
    from datasets import Dataset, DatasetDict

    splits = {}
    for split in ("train", SPLIT):
        path = folder / f"{split}.jsonl"
        rows = read_jsonl(path)
        _require(rows, ("text", "label"), path)
        splits[split] = rows if split == "train" else _take(rows, max_rows)
    if max_rows is not None:
        # Keep the training pool proportionate so quick runs stay quick; mteb still undersamples it per label.
        splits["train"] = _take(splits["train"], max(max_rows * 2, 256))
    labels = sorted({str(r["label"]) for rows in splits.values() for r in rows})
    index = {label: i for i, label in enumerate(labels)}
    return DatasetDict(
        {
            split: Dataset.from_dict(
                {"text": [str(r["text"]) for r in rows], "label": [index[str(r["label"])] for r in rows]}
            )
            for split, rows in splits.items()
        }
    )


def _task_class(task_type: str):
    from mteb.abstasks import (
        AbsTaskBitextMining,
        AbsTaskClassification,
        AbsTaskPairClassification,
        AbsTaskRetrieval,
        AbsTaskSTS,
    )

    return {
        "Retrieval": AbsTaskRetrieval,
        "STS": AbsTaskSTS,
        "PairClassification": AbsTaskPairClassification,
        "BitextMining": AbsTaskBitextMining,
        "Classification": AbsTaskClassification,
    }[task_type]


def _generic_task(name: str, task_type: str, subsets: list[str], folder: Path, extra: dict[str, Any]):
    """An mteb task of ``task_type`` named after the folder, for data mteb does not know."""
    from mteb import TaskMetadata

    multilingual = subsets != ["default"]
    # A folder may name its own main score (the passkey tasks: top-1 accuracy, recall_at_1).
    own = json.loads((folder / TASK_FILE).read_text(encoding="utf-8")) if (folder / TASK_FILE).is_file() else {}
    metadata = TaskMetadata(
        name=name,
        description=f"Offline task read from {folder}",
        dataset={"path": str(folder), "revision": "local"},
        type=task_type,
        category="t2t",
        modalities=["text"],
        eval_splits=[SPLIT],
        eval_langs={s: ["eng-Latn"] for s in subsets} if multilingual else ["eng-Latn"],
        main_score=own.get("main_score", MAIN_SCORES[task_type]),
    )
    cls = type(f"Offline{task_type}Task", (_task_class(task_type),), {"metadata": metadata, **extra})
    return cls()


def _known_task(name: str, task_type: str):
    """The real mteb task of that name when it is of the same type, else None."""
    import mteb

    try:
        task = mteb.get_task(name)
    except KeyError:
        return None
    return task if task.metadata.type == task_type else None


def pick_subsets(available: Sequence[str], subsets: Sequence[str] | None, where: str | Path) -> list[str] | None:
    """The requested subsets of ``available``, in its order; None (run them all) when none is requested or the
    task has a single one. A requested subset the task lacks is an error naming ``where`` and what it has."""
    if not subsets or list(available) == ["default"]:
        return None
    missing = sorted(set(subsets) - set(available))
    if missing:
        raise E5MistralError(f"{where}: no subset {', '.join(missing)} (it has {', '.join(sorted(available))})")
    return [s for s in available if s in set(subsets)]


def load_offline_task(
    folder: str | Path,
    name: str | None = None,
    max_rows: int | None = None,
    subsets: Sequence[str] | None = None,
    corpus_per_query: int = CORPUS_SAMPLE_PER_QUERY,
):
    """An mteb task (``AbsTask*`` instance, data loaded) built from a local folder.

    ``max_rows`` subsamples deterministically: N pairs/test rows (per subset), or N queries with their relevant
    documents plus ``corpus_per_query`` x N other documents. Scores on such subsets are not comparable to
    published ones. ``subsets`` keeps only those subsets (e.g. Tatoeba's ``deu-eng``) of a task that has several.
    """
    from datasets import DatasetDict

    folder = Path(folder)
    name = name or folder.name
    if max_rows is not None and max_rows < 1:
        raise E5MistralError(f"max_rows must be at least 1, got {max_rows}")
    if corpus_per_query < 0:
        raise E5MistralError(f"corpus_per_query must be at least 0, got {corpus_per_query}")
    task_type, subset_dirs = _layout(folder)

    data: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for subset, sub in subset_dirs.items():
        if task_type == "Retrieval":
            data[subset] = {SPLIT: _load_retrieval(sub, max_rows, corpus_per_query)}
        elif task_type == "BitextMining":
            for key, ds in _load_bitext(sub / "test.jsonl", max_rows).items():
                data[key if subset == "default" else f"{subset}-{key}" if key != "default" else subset] = DatasetDict(
                    {SPLIT: ds}
                )
        elif task_type == "Classification":
            data[subset] = _load_classification(sub, max_rows)
        elif task_type == "STS":
            path = _sts_file(sub)
            ds = _pairs(path, {"sentence1": "sentence1", "sentence2": "sentence2"}, "score", max_rows, float)
            data[subset] = DatasetDict({SPLIT: ds.rename_column("__value__", "score")})
            scores = ds["__value__"]
            extra.update(min_score=min(scores), max_score=max(scores))
        else:  # PairClassification
            path = sub / "test.jsonl"
            ds = _pairs(path, {"sentence1": "sentence1", "sentence2": "sentence2"}, "label", max_rows, int)
            if set(ds["__value__"]) - {0, 1}:
                raise E5MistralError(f"{path}: pair-classification labels must be 0 or 1")
            data[subset] = DatasetDict({SPLIT: ds.rename_column("__value__", "labels")})

    keep = pick_subsets(list(data), subsets, folder)
    if keep is not None:
        data = {key: data[key] for key in keep}
    task = _known_task(name, task_type)
    if task is None:
        task = _generic_task(name, task_type, sorted(data), folder, extra if task_type == "STS" else {})
        load_task_data(task, data)
    else:
        if task_type == "PairClassification" and task.label_column_name != "labels":
            for subset in data:
                data[subset] = data[subset].rename_column("labels", task.label_column_name)
        known = task.metadata.hf_subsets
        unknown = sorted(set(data) - set(known))
        if unknown and data.keys() != {"default"}:
            raise E5MistralError(
                f"{folder}: subset(s) {', '.join(unknown)} are not subsets of mteb's {name} ({', '.join(known)})"
            )
        if data.keys() == {"default"} and known != ["default"]:
            raise E5MistralError(
                f"{folder}: mteb's {name} has subsets {', '.join(known)}; put each in a sub-folder of that name"
            )
        logger.info("%s: local data evaluated with mteb's %s task (%s)", folder, name, type(task).__name__)
        load_task_data(task, data, [SPLIT], [s for s in known if s in data])
    return task
