"""Test-set contamination check of training data (paper Appendix B), with an optional cleaned copy.

A training text is contaminated by a task when it equals one of the task's test texts after case folding and
whitespace collapsing (the paper's "string match ... disregarding differences in character case and spacing"),
or, with ``ngram=N``, when it shares an N-word sequence with one. Texts shorter than ``min_words`` words are
ignored on both sides: the paper does not count such low-entropy texts ("i need a coffee") as contamination.
Retrieval corpora are not checked unless asked (the paper: shared corpora are standard practice); their queries are.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..errors import E5MistralError, MissingFileError
from ..families import all_output_keys
from ..local_data import fresh_read_options, write_parquet
from ..output_folders import check_output_folder
from ..text import match_key


logger = logging.getLogger(__name__)

# Text columns checked: the synthetic schema's LLM keys (every family), then common generic names.
SYNTHETIC_TEXT_FIELDS = tuple(all_output_keys())
GENERIC_TEXT_FIELDS = (
    "query",
    "anchor",
    "positive",
    "negative",
    "negatives",
    "pos",
    "neg",
    "document",
    "text",
    "sentence1",
    "sentence2",
    "question",
    "answer",
    "passage",
    "title",
)
TEXT_FIELDS = SYNTHETIC_TEXT_FIELDS + GENERIC_TEXT_FIELDS
MAX_EXAMPLES = 5
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


def _ngrams(words: list[str], n: int) -> Iterator[int]:
    for i in range(len(words) - n + 1):
        yield hash(tuple(words[i : i + n]))


class TestIndex:
    """Normalized test texts (and their N-grams) of several tasks, answering which tasks a text matches."""

    __test__ = False  # not a pytest class

    def __init__(self, min_words: int = 5, ngram: int | None = None):
        if min_words < 1:
            raise E5MistralError(f"min_words must be at least 1, got {min_words}")
        if ngram is not None and ngram < 1:
            raise E5MistralError(f"ngram must be at least 1, got {ngram}")
        self.min_words, self.ngram = min_words, ngram
        self.tasks: list[str] = []
        self.sizes: dict[str, int] = {}
        self._exact: dict[str, int] = {}  # text -> bit mask of task indexes
        self._grams: dict[int, int] = {}

    def add(self, task: str, texts: Iterable[str]) -> None:
        bit = 1 << len(self.tasks)
        self.tasks.append(task)
        count = 0
        for text in texts:
            key = match_key(text)
            words = key.split(" ")
            if len(words) < self.min_words:
                continue
            count += 1
            self._exact[key] = self._exact.get(key, 0) | bit
            if self.ngram is not None:
                for gram in _ngrams(words, self.ngram):
                    self._grams[gram] = self._grams.get(gram, 0) | bit
        self.sizes[task] = count

    def match(self, text: str) -> list[tuple[str, str]]:
        """[(task, 'exact' | 'N-gram')] for the tasks ``text`` matches."""
        key = match_key(text)
        words = key.split(" ")
        if len(words) < self.min_words:
            return []
        exact = self._exact.get(key, 0)
        grams = 0
        if self.ngram is not None and len(words) >= self.ngram:
            for gram in _ngrams(words, self.ngram):
                grams |= self._grams.get(gram, 0)
        found = []
        for i, task in enumerate(self.tasks):
            if exact >> i & 1:
                found.append((task, "exact"))
            elif grams >> i & 1:
                found.append((task, f"{self.ngram}-gram"))
        return found


# ---------------------------------------------------------------- test texts of mteb tasks


def _strings(values) -> Iterator[str]:
    for value in values:
        if isinstance(value, str):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, str))


def _dataset_texts(dataset, skip: Sequence[str] = ()) -> Iterator[str]:
    for name, feature in dataset.features.items():
        if name in skip or name in ("id", "_id", "lang"):
            continue
        dtype = getattr(feature, "dtype", None)
        inner = getattr(getattr(feature, "feature", None), "dtype", None)
        if dtype == "string" or inner == "string":  # text, or lists of texts
            yield from _strings(dataset[name])


def task_texts(task, include_corpus: bool = False) -> Iterator[str]:
    """Every test-set text of an mteb task (loaded here if needed): queries for retrieval, all inputs otherwise.

    Classification training splits are not test data and are skipped.
    """
    from datasets import Dataset

    if not task.data_loaded:
        task.load_data()
    data = task.dataset
    subsets = task.hf_subsets or list(data)
    for subset in subsets:
        by_split = data[subset] if subset in data else data
        for split in task.eval_splits:
            if split not in by_split:
                continue
            part = by_split[split]
            if isinstance(part, dict):  # retrieval: corpus / queries / relevant_docs
                yield from _dataset_texts(part["queries"])
                if include_corpus:
                    corpus = part["corpus"]
                    titles = corpus["title"] if "title" in corpus.column_names else [""] * len(corpus)
                    yield from (f"{t} {x}".strip() for t, x in zip(titles, corpus["text"]))
            elif isinstance(part, Dataset):
                yield from _dataset_texts(
                    part, skip=("label", "labels", "score") if task.metadata.type != "Classification" else ("label",)
                )


# ---------------------------------------------------------------- training data


@dataclass
class DataFile:
    """One data file of the training dataset (the unit that is checked and, with --remove, rewritten)."""

    config: str
    path: Path | None  # None: a Hub dataset read through datasets
    relative: str
    rows: list[dict] = field(default_factory=list)


def _front_matter(readme: Path) -> dict:
    import yaml

    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return {}
    try:
        return yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError as err:
        raise E5MistralError(f"{readme}: the YAML front matter does not parse ({err})") from None


def _config_files(folder: Path, config: dict) -> list[Path]:
    spec = config.get("data_files") or []
    patterns: list[str] = []
    for item in [spec] if isinstance(spec, (str, dict)) else spec:
        if isinstance(item, str):
            patterns.append(item)
        elif isinstance(item, dict):
            paths = item.get("path")
            patterns.extend([paths] if isinstance(paths, str) else paths or [])
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    if not files:
        raise MissingFileError(
            f"{folder}: config {config.get('config_name')!r} lists data files {patterns} that do not exist"
        )
    return files


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    from ..local_data import read_jsonl

    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise E5MistralError(f"{path} must hold a JSON list of objects")
        return data
    return read_jsonl(path)


def read_training_data(dataset: str | Path, configs: Sequence[str] | None = None) -> list[DataFile]:
    """The data files of DATASET: a Hub-layout folder, a folder of JSONL/parquet files, one such file, or a Hub id."""
    path = Path(dataset)
    files: list[DataFile] = []
    if path.is_file():
        if path.suffix not in DATA_SUFFIXES:
            raise E5MistralError(f"{path}: expected a {', '.join(DATA_SUFFIXES)} file")
        files.append(DataFile("default", path, path.name))
    elif path.is_dir():
        meta = _front_matter(path / "README.md") if (path / "README.md").is_file() else {}
        if meta.get("configs"):
            for config in meta["configs"]:
                name = config.get("config_name", "default")
                if configs and name not in configs:
                    continue
                for file in _config_files(path, config):
                    files.append(DataFile(name, file, file.relative_to(path).as_posix()))
        else:
            for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES):
                rel = file.relative_to(path)
                files.append(DataFile(rel.parts[0] if len(rel.parts) > 1 else "default", file, rel.as_posix()))
        if not files:
            raise E5MistralError(
                f"{path} holds no data files ({', '.join(DATA_SUFFIXES)}) or none of configs {list(configs or [])}"
            )
    else:
        import datasets

        try:
            names = configs or datasets.get_dataset_config_names(str(dataset))
            fresh = fresh_read_options(dataset)  # one walk over the folder's files, not one per config
            for name in names:
                for split, ds in datasets.load_dataset(str(dataset), name, **fresh).items():
                    files.append(DataFile(name, None, f"{name}/{split}.parquet", ds.to_list()))
        except Exception as err:  # noqa: BLE001 - a missing path or unreachable Hub id: one clear line
            raise MissingFileError(
                f"{dataset} is neither a local file/folder nor a loadable Hub dataset ({type(err).__name__}: {err})"
            ) from err
    for file in files:
        if file.path is not None:
            file.rows = _read_rows(file.path)
    return files


def row_texts(row: dict) -> Iterator[tuple[str, str]]:
    """(field, text) for the text fields of one training row."""
    for name in TEXT_FIELDS:
        value = row.get(name)
        if isinstance(value, str):
            yield name, value
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, str):
                    yield name, item


# ---------------------------------------------------------------- the check


def find_contamination(files: Sequence[DataFile], index: TestIndex) -> tuple[dict, dict[str, set[int]]]:
    """(report, {file.relative: contaminated row indexes})."""
    # The synthetic 'all' config repeats the family configs' rows: clean it, but do not count it twice.
    counted = {f.config for f in files} - ({"all"} if len({f.config for f in files}) > 1 else set())
    per_task = {
        t: {"test_texts": index.sizes[t], "matches": 0, "rows_affected": 0, "examples": []} for t in index.tasks
    }
    per_config: dict[str, dict[str, int]] = {}
    flagged: dict[str, set[int]] = {}
    for file in files:
        hits: set[int] = set()
        config_stats = per_config.setdefault(file.config, {"rows": 0, "rows_affected": 0})
        config_stats["rows"] += len(file.rows)
        for i, row in enumerate(file.rows):
            row_tasks: set[str] = set()
            for name, text in row_texts(row):
                for task, kind in index.match(text):
                    row_tasks.add(task)
                    if file.config in counted:
                        per_task[task]["matches"] += 1
                        if len(per_task[task]["examples"]) < MAX_EXAMPLES:
                            per_task[task]["examples"].append(
                                {
                                    "config": file.config,
                                    "file": file.relative,
                                    "row": i,
                                    "field": name,
                                    "match": kind,
                                    "text": text[:300],
                                }
                            )
            if row_tasks:
                hits.add(i)
                if file.config in counted:
                    for task in row_tasks:
                        per_task[task]["rows_affected"] += 1
        config_stats["rows_affected"] += len(hits)
        flagged[file.relative] = hits
    report = {
        "rows_checked": sum(s["rows"] for c, s in per_config.items() if c in counted),
        "rows_affected": sum(s["rows_affected"] for c, s in per_config.items() if c in counted),
        "min_words": index.min_words,
        "ngram": index.ngram,
        "tasks": per_task,
        "configs": per_config,
    }
    return report, flagged


def write_clean(
    dataset: str | Path,
    files: Sequence[DataFile],
    flagged: dict[str, set[int]],
    output: str | Path,
    overwrite: bool = False,
) -> Path:
    """A copy of the dataset without the flagged rows, in the same layout (card and other files copied as is)."""
    source = Path(dataset)
    output = check_output_folder(output, [source], overwrite)
    tmp = output.with_name(output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if source.is_dir():
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    for file in files:
        target = tmp / (file.relative if source.is_dir() or file.path is None else file.path.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        drop = flagged.get(file.relative, set())
        if file.path is None or file.path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            if file.path is not None:
                table = pq.read_table(file.path)  # keeps the schema metadata (datasets features)
            else:
                table = pa.Table.from_pylist(file.rows)
            keep = pa.array([i for i in range(table.num_rows) if i not in drop], type=pa.int64())
            write_parquet(table.take(keep), target)  # typed indices: an empty list would be null-typed
        elif file.path.suffix == ".json":
            target.write_text(
                json.dumps([r for i, r in enumerate(file.rows) if i not in drop], ensure_ascii=False, indent=2),
                encoding="utf-8",
            )
        else:
            with open(target, "w", encoding="utf-8") as handle:
                for i, row in enumerate(file.rows):
                    if i not in drop:
                        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)
    return output


def _row_key(row: dict) -> str:
    """What identifies a row across configs: its request id (synthesis rows), else its whole content."""
    return row.get("request_id") or json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)


def update_card_counts(readme: Path, remaining: dict[str, int], removed: dict[str, int], against: list[str]) -> None:
    """Rewrite a dataset card's per-config row counts (the synthesis card's config table and title) and add a
    section saying what was removed."""
    text = readme.read_text(encoding="utf-8")
    for config, rows in remaining.items():
        text = re.sub(rf"^(\| `{re.escape(config)}` \| )\d+( \|)", rf"\g<1>{rows}\g<2>", text, flags=re.M)
    if "all" in remaining:
        text = re.sub(r"^(# .*\()\d+( examples\))", rf"\g<1>{remaining['all']}\g<2>", text, count=1, flags=re.M)
    per_config = ", ".join(f"`{c}` {n}" for c, n in removed.items() if n) or "none"
    text = text.rstrip("\n") + (
        f"\n\n## Decontamination\n\nRows matching test texts of {', '.join(against)} were removed "
        f"(`e5-mistral decontaminate --remove`): {per_config}.\n"
    )
    readme.write_text(text, encoding="utf-8")


def report_table(report: dict) -> str:
    lines = ["| Task | test texts | matches | rows affected |", "|---|---:|---:|---:|"]
    for task, stats in report["tasks"].items():
        lines.append(f"| {task} | {stats['test_texts']} | {stats['matches']} | {stats['rows_affected']} |")
    lines.append(f"| **any task** | | | {report['rows_affected']} of {report['rows_checked']} |")
    return "\n".join(lines)


def decontaminate(
    dataset: str | Path,
    against: Sequence[str],
    benchmarks_dir: str | Path | None = None,
    min_words: int = 5,
    ngram: int | None = None,
    include_corpus: bool = False,
    configs: Sequence[str] | None = None,
    remove: bool = False,
    output: str | Path | None = None,
    report_path: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Check DATASET against the test sets of ``against``; with ``remove``, write the cleaned copy to ``output``."""
    from .evaluate import resolve_tasks

    if remove and output is None:
        raise E5MistralError("--remove needs --output DIR for the cleaned dataset")
    if remove:  # before the slow part: a refused folder fails in a second
        check_output_folder(output, [dataset], overwrite)
    files = read_training_data(dataset, configs)
    index = TestIndex(min_words=min_words, ngram=ngram)
    for task in resolve_tasks(against, benchmarks_dir):
        index.add(task.metadata.name, task_texts(task, include_corpus))
        logger.info(
            "%s: %d test texts of at least %d words", task.metadata.name, index.sizes[task.metadata.name], min_words
        )
    report, flagged = find_contamination(files, index)
    report = {"dataset": str(dataset), "against": list(index.tasks), **report}
    if remove:
        # The rows go from every config that holds them (the synthetic `all` repeats the families), not only
        # from the configs that were checked.
        every_file = read_training_data(dataset) if configs else files
        dropped = {_row_key(f.rows[i]) for f in files for i in flagged.get(f.relative, ())}
        flagged = {f.relative: {i for i, r in enumerate(f.rows) if _row_key(r) in dropped} for f in every_file}
        report["output"] = str(write_clean(dataset, every_file, flagged, output, overwrite))
        report["rows_removed"] = report["rows_affected"]
        remaining: dict[str, int] = {}
        removed: dict[str, int] = {}
        for f in every_file:
            remaining[f.config] = remaining.get(f.config, 0) + len(f.rows) - len(flagged[f.relative])
            removed[f.config] = removed.get(f.config, 0) + len(flagged[f.relative])
        report["rows_removed_per_config"] = removed
        if (Path(output) / "README.md").is_file():
            update_card_counts(Path(output) / "README.md", remaining, removed, list(index.tasks))
    if report_path is not None:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report
