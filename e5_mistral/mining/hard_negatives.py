"""Hard negatives mined with an embedder, between synthesis and training.

The search is sentence-transformers' ``mine_hard_negatives`` (its vocabulary: ``num_negatives``, ``range_min``,
``range_max``, ``relative_margin``, ``absolute_margin``, ``max_score``, ``sampling_strategy``, an optional cross
encoder, FAISS when installed). This module only turns rows of any input into (query with its instruction,
positive) pairs, and the mined lists back into training rows:

    query, positive, negative (list: the row's own negative first, then the mined ones), negative_scores (the
    teacher's score of each negative; null for the row's own), positive_score, instruction, family

which ``load_dataset`` reads and training takes as a labeled dataset (``num_hard_negatives: k`` uses the first k).
Queries are encoded as ``Instruct: {task}\\nQuery: {query}``, documents bare, as the paper trains. Each config is
mined and written on its own, and embeddings are cached, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Optional

from ..errors import E5MistralError
from ..families import FAMILY_SPECS
from ..instructions import format_query
from ..local_data import write_parquet
from ..options import option
from ..output_folders import check_apart, check_replaceable
from .inputs import DatasetInput, dataset_source, input_configs, load_rows, read_corpus, training_pair


logger = logging.getLogger(__name__)

DATA_FILE = "train-00000-of-00001.parquet"
DONE_MARKER = ".mined"  # written last in a config's folder: the config is finished
SAMPLING_STRATEGIES = ("top", "random")
CONFIG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a folder name inside the output, never "." or ".."


@dataclass
class MiningArguments(DatasetInput):
    HELP_GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "input and output": ("dataset", "output", "configs", "split", "columns", "instruction"),
        "teacher": (
            "teacher",
            "query_prompt",
            "corpus_prompt",
            "corpus",
            "cross_encoder",
            "batch_size",
            "devices",
            "use_faiss",
        ),
        "which negatives": (
            "num_negatives",
            "range_min",
            "range_max",
            "relative_margin",
            "absolute_margin",
            "max_score",
            "sampling_strategy",
            "seed",
        ),
        "Hub and progress": ("push_to_hub", "private", "no_progress", "overwrite"),
    }
    output: Optional[str] = option(
        "folder for the mined dataset (Hub layout, one config per input config, plus a card)", None
    )
    teacher: Optional[str] = option(
        "sentence-transformers model that scores candidates (a Hub id, a folder, or an export of this project; "
        "default: the bundled all-MiniLM-L6-v2)",
        None,
    )
    corpus: Optional[str] = option(
        "candidate documents: a text file (one a line) or JSON Lines with a `text` field (default: the positives)",
        None,
    )
    query_prompt: Optional[str] = option(
        "a fixed prefix for queries instead of their instruction (a teacher trained otherwise, e.g. 'query: ' for "
        "multilingual-e5-base)",
        None,
    )
    corpus_prompt: Optional[str] = option("a prefix for documents (e.g. 'passage: ' for multilingual-e5-base)", None)
    num_negatives: int = option("negatives to mine per row", 3)
    range_min: int = option("skip this many of the closest candidates", 0)
    range_max: Optional[int] = option("consider only this many of the closest candidates", 50)
    relative_margin: Optional[float] = option(
        "keep a negative only if its score <= (1 - margin) x the positive's (0.05: NV-Retriever's 95%% rule)",
        0.05,
    )
    absolute_margin: Optional[float] = option("keep a negative only if its score <= the positive's - margin", None)
    max_score: Optional[float] = option("keep a negative only if its score <= this", None)
    sampling_strategy: str = option("top (the closest allowed) or random (among the allowed)", "top")
    seed: int = option("seed of --sampling-strategy random", 0)
    cross_encoder: Optional[str] = option("a CrossEncoder that rescores the candidates", None)
    batch_size: int = option("encoding batch size", 32)
    devices: Optional[list[str]] = option(
        "encode on these devices, one process each (e.g. cuda:0 cuda:1; cpu cpu), through sentence-transformers' "
        "multi-process pool (default: one process on the model's device)",
        None,
    )
    use_faiss: Optional[bool] = option("search with FAISS (default: when it is installed)", None)
    push_to_hub: Optional[str] = option("push the mined dataset to this Hub repo id", None)
    private: bool = option("make the Hub repo private", False)
    no_progress: bool = option("hide progress bars", False)
    overwrite: bool = option(
        "replace a non-empty --output that is not this command's, or was mined with other settings", False
    )

    def __post_init__(self):
        super().__post_init__()
        if self.output is None:
            raise E5MistralError("--output is required")
        if self.num_negatives < 1 or self.batch_size < 1 or self.range_min < 0:
            raise E5MistralError("--num-negatives and --batch-size must be >= 1 and --range-min >= 0")
        if self.range_max is not None and self.range_max <= self.range_min:
            raise E5MistralError(f"--range-max ({self.range_max}) must be above --range-min ({self.range_min})")
        if self.sampling_strategy not in SAMPLING_STRATEGIES:
            raise E5MistralError(f"--sampling-strategy must be top or random, not {self.sampling_strategy!r}")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise E5MistralError(f"--relative-margin must be in [0, 1), got {self.relative_margin}")


# The settings a mined config depends on: a rerun with other values of any of these mines nothing into the old folder.
MINING_SETTINGS = (
    *("split", "columns", "instruction", "query_prompt", "corpus_prompt", "corpus", "cross_encoder"),
    *MiningArguments.HELP_GROUPS["which negatives"],
)


# -- mining --------------------------------------------------------------------------------------------------------
def mine_config(
    pairs: list[dict], model, args: MiningArguments, cache_folder: Path, corpus: list[str] | None, cross_encoder=None
) -> tuple[list[dict], dict]:
    """The rows with their mined negatives; rows for which too few candidates pass the margins keep fewer."""
    import importlib.util

    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    # Exactly one prompt per text: either the row's own instruction, written into the anchor, or --query-prompt,
    # given to mine_hard_negatives; never the teacher's stored `query` prompt on top ("" disables that).
    if args.query_prompt is not None:
        anchors = [p["query"] for p in pairs]
    else:
        anchors = [format_query(p["instruction"], p["query"]) for p in pairs]
    dataset = Dataset.from_dict({"anchor": anchors, "positive": [p["positive"] for p in pairs]})
    # the candidates stay the same in every pass below (the rows' positives, plus --corpus), so ranks do too
    candidates = list(dict.fromkeys((corpus or []) + [p["positive"] for p in pairs]))
    use_faiss = args.use_faiss if args.use_faiss is not None else importlib.util.find_spec("faiss") is not None
    found: dict[tuple[str, str], tuple[list[str], list[float], float]] = {}
    for wanted in range(args.num_negatives, 0, -1):  # rows short of candidates get as many as pass the margins
        todo = [i for i, a in enumerate(anchors) if (a, pairs[i]["positive"]) not in found]
        if not todo:
            break
        mined = _seeded(args.seed, mine_hard_negatives)(
            dataset.select(todo),
            model,
            anchor_column_name="anchor",
            positive_column_name="positive",
            corpus=candidates,
            cross_encoder=cross_encoder,
            range_min=args.range_min,
            range_max=args.range_max,
            max_score=args.max_score,
            absolute_margin=args.absolute_margin,
            relative_margin=args.relative_margin,
            num_negatives=wanted,
            sampling_strategy=args.sampling_strategy,
            query_prompt=args.query_prompt or "",
            corpus_prompt=args.corpus_prompt or "",
            output_format="n-tuple",
            output_scores=True,
            batch_size=args.batch_size,
            use_faiss=use_faiss,
            use_multi_process=list(args.devices) if args.devices else False,
            verbose=not args.no_progress,
            cache_folder=str(cache_folder),
        )
        for row in mined:
            negatives = [row[f"negative_{i}"] for i in range(1, wanted + 1)]
            found[(row["anchor"], row["positive"])] = (negatives, row["scores"][1:], row["scores"][0])
    rows, counts = [], {"rows": len(pairs), "mined_negatives": 0, "rows_with_fewer": 0, "rows_without": 0}
    for anchor, pair in zip(anchors, pairs):
        negatives, scores, positive_score = found.get((anchor, pair["positive"]), ([], [], None))
        counts["mined_negatives"] += len(negatives)
        counts["rows_with_fewer"] += 0 < len(negatives) < args.num_negatives
        counts["rows_without"] += not negatives
        rows.append(
            {
                "query": pair["query"],
                "positive": pair["positive"],
                "negative": pair["negatives"] + negatives,
                "negative_scores": [None] * len(pair["negatives"]) + [float(s) for s in scores],
                "positive_score": None if positive_score is None else float(positive_score),
                "instruction": pair["instruction"],
                "family": pair["family"],
            }
        )
    return rows, counts


def _seeded(seed: int, function):
    """``function`` run with Python's ``random`` (which sentence-transformers' random sampling draws from) seeded, and
    its state restored after: the draw repeats, nothing else's randomness changes."""

    def call(*args, **kwargs):
        state = random.getstate()
        random.seed(seed)
        try:
            return function(*args, **kwargs)
        finally:
            random.setstate(state)

    return call


def check_config_names(configs: list[str], dataset: str) -> None:
    for name in configs:
        if not CONFIG_NAME.match(name):
            raise E5MistralError(f"{dataset}: config name {name!r} is not a plain folder name; refusing to write it")


def mining_settings(args: MiningArguments, teacher: str) -> dict:
    """What a mined config depends on, recorded per config in the report."""
    return {"teacher": teacher, **{name: getattr(args, name) for name in MINING_SETTINGS}}


def teacher_cache(output: Path, teacher: str, config: str) -> Path:
    """The embedding cache of one teacher: sentence-transformers keys its cache by the model's Hub name, which a local
    folder lacks, so two teachers never share a folder here."""
    path = Path(teacher).expanduser()
    identity = str(path.resolve()) if path.exists() else teacher
    if path.is_dir():  # a folder's content, not only its name: a retrained export at the same path is another teacher
        identity += "".join(
            f":{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(path.glob("*.safetensors"))
        )
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
    return output / ".cache" / digest / config


def previous_report(output: Path, overwrite: bool) -> dict | None:
    """The report of an earlier mine run into ``output``, to resume; None for an empty folder. A folder that is not a
    mine output is refused (unless ``overwrite``, when it is replaced)."""
    path = output / "report.json"
    report = None
    if path.is_file():
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            report = None
    if isinstance(report, dict) and isinstance(report.get("configs"), dict) and "settings" in report:
        return report
    check_replaceable(output, overwrite)  # someone else's folder: only with --overwrite
    if output.is_dir() and any(output.iterdir()):
        shutil.rmtree(output)
    return None


def _features():
    from datasets import Features, Sequence, Value

    return Features(
        {
            "query": Value("string"),
            "positive": Value("string"),
            "negative": Sequence(Value("string")),
            "negative_scores": Sequence(Value("float64")),
            "positive_score": Value("float64"),
            "instruction": Value("string"),
            "family": Value("string"),
        }
    )


def _write(rows: list[dict], folder: Path) -> None:
    from datasets import Dataset

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    features = _features()
    rows_or_none = rows or {name: [] for name in features}  # a config without rows keeps its typed columns
    dataset = (
        Dataset.from_list(rows, features=features) if rows else Dataset.from_dict(rows_or_none, features=features)
    )
    write_parquet(dataset.data.table, tmp / DATA_FILE)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def mine(args: MiningArguments, judge=None) -> dict:
    """Mine every config (resuming finished ones), let ``judge`` (:class:`.judge.JudgeArguments`, when its
    ``judge_model`` is set) drop false negatives, write the Hub layout and card; returns the report."""
    from sentence_transformers import CrossEncoder

    from ..evaluation.evaluate import load_model
    from ..llm.lock import OutputLock
    from .judge import check_judge, judge_negatives, judge_settings

    if not args.dataset:
        raise E5MistralError("the dataset to mine is required (DATASET, or --dataset)")
    source, data_file = dataset_source(args.dataset)
    local_input = data_file or (source if Path(source).exists() else None)
    output = check_apart(args.output, [local_input] if local_input else [])
    judging = judge is not None and judge.judge_model is not None
    if judge is not None:
        check_judge(judge)
    configs = input_configs(args)
    check_config_names(configs, args.dataset)
    teacher = args.teacher
    if teacher is None:
        from ..local_models import minilm_path

        teacher = str(minilm_path())
    settings = mining_settings(args, teacher)
    previous = previous_report(output, args.overwrite)
    with OutputLock(output, "e5-mistral mine"):
        model = corpus = cross_encoder = None
        report = {
            "settings": {k: v for k, v in asdict(args).items() if k not in ("push_to_hub", "private", "overwrite")},
            "judge": judge_settings(judge) if judging else None,
            "teacher": teacher,
            "configs": dict(previous["configs"]) if previous else {},
        }
        # written before any work, so a run killed mid-way leaves a folder the next run knows as its own
        (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        for config in configs:
            folder = output / config
            before = report["configs"].get(config)
            if before is not None and before.get("settings", settings) != settings and not args.overwrite:
                changed = sorted(k for k in settings if before["settings"].get(k) != settings[k])
                raise E5MistralError(
                    f"{output / config} was mined with other settings ({', '.join(changed)}); pass --overwrite to "
                    "mine it again with these, or choose another --output"
                )
            if (folder / DONE_MARKER).is_file() and before is not None and before.get("settings") == settings:
                logger.info("%s: already mined (delete %s to mine it again)", config, folder)
                continue
            (folder / DONE_MARKER).unlink(missing_ok=True)
            where = f"{args.dataset}" + ("" if config == "default" else f" config {config}") + f" split {args.split}"
            pairs = [
                training_pair(row, f"{where}, row {i}", args.instruction)
                for i, row in enumerate(load_rows(args, config))
            ]
            if not pairs:  # a family the dataset has no rows of: an empty config, nothing to mine
                _write([], folder)
                empty = dict.fromkeys(("rows", "mined_negatives", "rows_with_fewer", "rows_without"), 0)
                report["configs"][config] = {**empty, "settings": settings}
                (folder / DONE_MARKER).write_text("")
                continue
            if model is None:
                model = load_model(teacher, flag="--teacher")
                corpus = read_corpus(args.corpus) if args.corpus else None
                cross_encoder = (
                    load_model(args.cross_encoder, flag="--cross-encoder", loader=CrossEncoder)
                    if args.cross_encoder
                    else None
                )
            rows, counts = mine_config(
                pairs, model, args, teacher_cache(output, teacher, config), corpus, cross_encoder
            )
            counts["settings"] = settings
            if judging:  # a killed or budget-stopped run mines again from the cached embeddings, judges only the rest
                rows, counts["judge"] = judge_negatives(rows, judge, output / "judge", args.no_progress)
                mined = [sum(score is not None for score in row["negative_scores"]) for row in rows]
                counts.update(
                    mined_negatives=sum(mined),
                    rows_with_fewer=sum(0 < m < args.num_negatives for m in mined),
                    rows_without=sum(m == 0 for m in mined),
                )
            _write(rows, folder)
            report["configs"][config] = counts
            (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
            if judging and (counts["judge"]["budget_stopped"] or counts["judge"].get("failed_requests")):
                logger.warning("%s: not every negative was judged; rerun to judge the rest", config)
                continue
            (folder / DONE_MARKER).write_text("")
        if set(FAMILY_SPECS) <= set(configs):  # the synthesis layout: rebuild `all` from the families
            _rebuild_all(output, configs)
            report["configs"]["all"] = {"rows": sum(report["configs"][c]["rows"] for c in configs)}
        (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        write_card(output, report, [c for c in report["configs"]])
    if args.push_to_hub:
        from ..hub.writer import push_to_hub

        # The dataset layout and its card only: not the embedding cache, the judge's journal and settings (its
        # endpoint), the lock or the report's local paths.
        push_to_hub(output, args.push_to_hub, private=args.private, allow_patterns=["README.md", "*/*.parquet"])
    return report


def _rebuild_all(output: Path, configs: list[str]) -> None:
    import pyarrow.parquet as pq

    rows = [r for c in configs for r in pq.read_table(output / c / DATA_FILE).to_pylist()]
    _write(rows, output / "all")


def write_card(output: Path, report: dict, configs: list[str]) -> None:
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(
        configs=[{"config_name": c, "data_files": [{"split": "train", "path": f"{c}/*.parquet"}]} for c in configs],
        tags=["embeddings", "hard-negatives", "e5-mistral"],
        pretty_name="Training data with mined hard negatives",
    )
    card = DatasetCard.from_template(
        data,
        template_path=str(Path(__file__).parent / "card_template.md"),
        report=report,
        settings=report["settings"],
        counts=json.dumps(report["configs"], indent=2),
    )
    card.save(output / "README.md")
