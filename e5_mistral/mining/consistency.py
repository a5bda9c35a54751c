"""``e5-mistral filter``: drop generated pairs whose positive a teacher embedder does not rank near the top.

The ranking-consistency filter of KaLM-Embedding: a row is kept when its positive is among the teacher's top k
documents for its query, the candidates being every document of the row's family in the dataset (positives and
hard negatives). ``--min-score`` adds Qwen3-Embedding's rule (the pair's cosine above a threshold). Queries of the
asymmetric families carry their instruction (``Instruct: {task}\\nQuery: {query}``), as in training; the symmetric
families (STS, bitext) compare their own two texts, both bare or both with ``--corpus-prompt``. Queries are scored
against documents in blocks, so memory holds the embeddings and one block of scores, never the whole score matrix.

``--judge-model`` adds an LLM judge (:mod:`.judge`): each row kept so far is shown to it with its task, and a row
whose positive it finds not to satisfy the query is dropped. ``--top-k 0`` leaves the judge alone. The judge's
journal of paid answers is kept in ``OUTPUT/judge/``: a rerun into the same folder asks only what is not answered.

The input is anything ``mine`` reads (:mod:`.inputs`): rows of the families, or labeled rows that become rows of
their family (short_long when they name none). The output mirrors ``e5-mistral generate``'s: ``OUTPUT/dataset/`` in
the Hub layout training reads, ``OUTPUT/report.json`` with what was kept and dropped per family and language, and
``OUTPUT/dropped.jsonl`` with every dropped row and its reason.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import E5MistralError
from ..families import FAMILY_SPECS
from ..hub.schema import ALL_CONFIG, columns
from ..instructions import format_query
from ..options import option
from ..output_folders import check_apart, check_replaceable
from .inputs import DatasetInput, dataset_source, family_row, input_configs, load_rows


logger = logging.getLogger(__name__)
JUDGE_FOLDER = "judge"  # the LLM judge's journal and lock, kept across reruns
QUERY_CHUNK = 1024  # queries and documents scored at once: a block of scores is 1024 x 16384 floats, 64 MB
DOCUMENT_CHUNK = 16384
OWN_FILES = ("dataset", "dropped.jsonl", "report.json")  # what the filter writes beside the judge's journal


@dataclass
class FilterArguments(DatasetInput):
    output: Optional[str] = option("folder for the filtered output (dataset/, report.json, dropped.jsonl)", None)
    teacher: Optional[str] = option(
        "sentence-transformers model that ranks the documents (default: the bundled all-MiniLM-L6-v2)", None
    )
    top_k: int = option(
        "keep a row when its positive is among the teacher's top k documents for its query (0: no ranking filter)", 3
    )
    min_score: Optional[float] = option("also drop a row whose query-positive cosine is below this", None)
    query_prompt: Optional[str] = option(
        "a fixed prefix for queries instead of their instruction (e.g. 'query: ' for multilingual-e5-base)",
        None,
    )
    corpus_prompt: Optional[str] = option("a prefix for documents (e.g. 'passage: ')", None)
    batch_size: int = option("encoding batch size", 32)
    overwrite: bool = option("replace a non-empty --output folder", False)

    def __post_init__(self):
        super().__post_init__()
        if self.output is None:
            raise E5MistralError("--output is required")
        if self.top_k < 0:
            raise E5MistralError("--top-k must be at least 0 (0: no ranking filter)")
        if self.batch_size < 1:
            raise E5MistralError("--batch-size must be at least 1")
        if self.min_score is not None and not -1 <= self.min_score <= 1:
            raise E5MistralError(f"--min-score is a cosine, between -1 and 1, got {self.min_score}")


def read_rows(args: FilterArguments) -> list[dict]:
    """Every row of the input's configs, as rows of the families (see :func:`.inputs.family_row`)."""
    rows = []
    for config in input_configs(args):
        for i, row in enumerate(load_rows(args, config)):
            rows.append(family_row(row, f"{args.dataset}, config {config}, row {i}", args.instruction))
    return rows


def run_folder(args: FilterArguments) -> Path | None:
    """The local folder whose report.json and run_config.json (of generate or adapt) the output carries forward."""
    source, data_file = dataset_source(args.dataset)
    path = Path(data_file or source)
    if not path.is_dir():
        return None  # a Hub id or a file
    return path.parent if path.name == "dataset" and (path.parent / "report.json").is_file() else path


def _pair(row: dict, args: FilterArguments) -> tuple[str, str, list[str]]:
    """(query text as the teacher sees it, positive, the row's documents) of one row."""
    spec = FAMILY_SPECS[row["family"]]
    query_key, positive_key, negative_key = spec.fields
    query = row[query_key]
    if spec.brainstorms:
        query = args.query_prompt + query if args.query_prompt is not None else format_query(row["task"], query)
    else:  # symmetric: the query is a text like the documents, and is prefixed as they are
        query = (args.corpus_prompt or "") + query
    documents = [row[positive_key]] + ([row[negative_key]] if negative_key and row.get(negative_key) else [])
    return query, row[positive_key], documents


def positive_ranks(model, rows: Sequence[dict], args: FilterArguments) -> tuple[np.ndarray, np.ndarray]:
    """(rank of each row's positive among its family's documents, 0 = first; the query-positive cosine)."""
    pairs = [_pair(row, args) for row in rows]
    documents = list(dict.fromkeys(d for _, _, docs in pairs for d in docs))
    index = {d: i for i, d in enumerate(documents)}
    # prompt="": the texts carry their prompts already, never the teacher's stored default on top
    encode = dict(batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True, prompt="")
    queries = model.encode([q for q, _, _ in pairs], **encode)
    corpus = model.encode([(args.corpus_prompt or "") + d for d in documents], **encode)
    positives = np.array([index[p] for _, p, _ in pairs], dtype=np.int64)
    return count_above(queries, corpus, positives)


def count_above(queries: np.ndarray, corpus: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(how many documents score above each query's positive, the positive's score), in blocks of ``QUERY_CHUNK``
    queries by ``DOCUMENT_CHUNK`` documents: memory holds the embeddings and one block of scores."""
    cosines = np.einsum("ij,ij->i", queries, corpus[positives]).astype(np.float32)
    ranks = np.zeros(len(queries), dtype=np.int64)
    for start in range(0, len(queries), QUERY_CHUNK):
        rows = slice(start, start + QUERY_CHUNK)
        for first in range(0, len(corpus), DOCUMENT_CHUNK):
            scores = queries[rows] @ corpus[first : first + DOCUMENT_CHUNK].T
            above = scores > cosines[rows, None]
            own = np.flatnonzero((positives[rows] >= first) & (positives[rows] < first + DOCUMENT_CHUNK))
            above[own, positives[rows][own] - first] = False  # a positive never outranks itself (rounding aside)
            ranks[rows] += above.sum(axis=1)
    return ranks, cosines


def filter_rows(model, rows: list[dict], args: FilterArguments) -> tuple[list[dict], list[dict]]:
    """(kept rows, dropped rows with ``filter_reason``), family by family."""
    if model is None:  # --top-k 0 and no --min-score: the judge alone
        return list(rows), []
    kept, dropped = [], []
    for family in FAMILY_SPECS:
        group = [r for r in rows if r["family"] == family]
        if not group:
            continue
        ranks, cosines = positive_ranks(model, group, args)
        for row, rank, cosine in zip(group, ranks, cosines):
            if args.top_k and rank >= args.top_k:
                dropped.append({**row, "filter_reason": f"positive ranked {rank + 1} of {family}'s documents"})
            elif args.min_score is not None and cosine < args.min_score:
                dropped.append({**row, "filter_reason": f"cosine {cosine:.3f} below {args.min_score}"})
            else:
                kept.append(row)
    return kept, dropped


def judge_rows(rows: list[dict], judge, folder: Path) -> tuple[list[dict], list[dict], dict]:
    """(kept rows, dropped rows with ``filter_reason``, the judge's counts): a row is dropped when the judge finds
    that its positive does not satisfy its query (an unreadable answer keeps it)."""
    from .judge import POSITIVE_PROMPT, judge_pairs

    pairs = []
    for row in rows:
        query_key, positive_key, _ = FAMILY_SPECS[row["family"]].fields
        pairs.append((row["task"], row[query_key], row[positive_key]))
    verdicts, counts = judge_pairs(POSITIVE_PROMPT, pairs, judge, folder, "e5-mistral filter (judge)")
    kept = [row for row, relevant in zip(rows, verdicts) if relevant is not False]
    reason = f"the judge ({judge.judge_model}) found that the positive does not satisfy the query"
    dropped = [{**row, "filter_reason": reason} for row, relevant in zip(rows, verdicts) if relevant is False]
    return kept, dropped, {"candidates": len(rows), "dropped": len(dropped), **counts}


def _counts(kept: list[dict], dropped: list[dict], key: str) -> dict[str, dict[str, int]]:
    kept_n, dropped_n = Counter(r.get(key) for r in kept), Counter(r.get(key) for r in dropped)
    return {
        str(k): {"kept": kept_n[k], "dropped": dropped_n[k]} for k in sorted(set(kept_n) | set(dropped_n), key=str)
    }


def consistency_filter(args: FilterArguments, judge=None) -> dict:
    """Filter ``args.dataset`` into ``args.output`` (with ``judge``, a :class:`.judge.JudgeArguments` whose
    ``judge_model`` is set, also by an LLM judge); returns the report."""
    from ..evaluation.evaluate import load_model
    from .judge import check_judge, judge_settings

    if not args.dataset:
        raise E5MistralError("the dataset to filter is required (DATASET, or --dataset)")
    judging = judge is not None and judge.judge_model is not None
    ranking = bool(args.top_k) or args.min_score is not None
    if not ranking and not judging:
        raise E5MistralError("--top-k 0 filters nothing without --min-score or --judge-model")
    if judge is not None:
        check_judge(judge)
    source, data_file = dataset_source(args.dataset)
    run = run_folder(args)
    local = [Path(p) for p in (data_file or source, run) if p is not None and Path(p).exists()]
    output = check_apart(args.output, local)
    if not _filter_output(output):  # a folder this command wrote is resumed (its judge's answers reused)
        check_replaceable(output, args.overwrite)
    rows = read_rows(args)
    if args.teacher is None and ranking:
        from ..local_models import minilm_path

        args.teacher = str(minilm_path())
    kept, dropped = filter_rows(load_model(args.teacher) if ranking else None, rows, args)
    source_report = run / "report.json" if run else None
    report = json.loads(source_report.read_text()) if source_report and source_report.is_file() else {}
    report["filter"] = {"settings": {k: v for k, v in asdict(args).items() if k != "overwrite"}, "source": source}
    settings = generation_settings(run) if run else {}
    if judging:
        kept, judged_off, counts = judge_rows(kept, judge, output / JUDGE_FOLDER)
        dropped += judged_off
        report["filter"]["judge"] = {**judge_settings(judge), **counts}
    report["filter"].update(
        kept=len(kept),
        dropped=len(dropped),
        per_family=_counts(kept, dropped, "family"),
        per_language=_counts(kept, dropped, "language"),
    )
    _write(output, kept, dropped, report, settings)
    return report


def _filter_output(folder: Path) -> bool:
    """Whether ``folder`` is an earlier output of this command (its report names the filter's settings)."""
    try:
        return "filter" in json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, TypeError):
        return False


def generation_settings(run_folder: Path) -> dict:
    """The generation settings the source's card states (the run's ``run_config.json``), carried to the output's."""
    from ..hub.writer import CARD_SETTINGS

    path = run_folder / "run_config.json"
    if not path.is_file():
        return {}
    stored = json.loads(path.read_text(encoding="utf-8"))
    return {k: stored[k] for k in CARD_SETTINGS if k in stored}


def _write(output: Path, kept: list[dict], dropped: list[dict], report: dict, settings: dict) -> None:
    """The filter's files in ``output``, replacing earlier ones; the judge's journal stays for a rerun."""
    from ..hub.writer import write_hub_folder

    if (output / JUDGE_FOLDER).is_dir():  # the judge's journal stays; only the filter's own files are replaced
        for name in OWN_FILES:
            path = output / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    else:  # no journal: checked replaceable, so the folder is the filter's
        shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    with open(output / "dropped.jsonl", "w", encoding="utf-8") as handle:
        for row in dropped:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (output / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    # columns a stage added to the schema's (the passage ids of `e5-mistral adapt`) travel with the kept rows
    known = {*columns(ALL_CONFIG), "filter_reason"}
    extra = tuple(dict.fromkeys(k for row in kept[:1] + dropped[:1] for k in row if k not in known))
    extra = tuple(k for k in extra if all(isinstance(row.get(k), (str, type(None))) for row in kept))  # text only
    write_hub_folder(kept, output / "dataset", report, settings, extra_columns=extra)


def main(argv: Sequence[str] | None = None, prog: str = "e5-mistral filter") -> int:
    from ..cli import CommandParser, fail, log_lines, run
    from .judge import JudgeArguments

    parser = CommandParser([FilterArguments, JudgeArguments], prog=prog, description=__doc__.splitlines()[0])
    try:
        args, judge = parser.parse_with_dataset(argv, "filter")
    except E5MistralError as err:
        return fail(prog, err, code=2)
    log_lines(prog)

    def _filter() -> int:
        report = consistency_filter(args, judge)["filter"]
        for family, counts in report["per_family"].items():
            print(f"{family}: kept {counts['kept']}, dropped {counts['dropped']}")
        if report.get("judge"):
            verdicts = report["judge"]
            print(
                f"the judge dropped {verdicts['dropped']} of {verdicts['candidates']} rows whose positive it found off "
                f"the query ({verdicts['unjudged']} unjudged, kept; {verdicts['requests_sent']} requests)"
            )
        print(
            f"kept {report['kept']} of {report['kept'] + report['dropped']} rows; filtered dataset in "
            f"{Path(args.output) / 'dataset'} (dropped rows and their reasons: {Path(args.output) / 'dropped.jsonl'})"
        )
        return 0

    return run(prog, _filter)
