"""``e5-mistral adapt``: training data from a user's own documents, in the Hub layout every other command reads.

corpus -> passages (chunked, stable ids) -> a seeded draw -> step 1, the LLM writes a task and a query per passage
(:mod:`.queries`) -> step 2, the teacher's neighbours and the judge pick the positive and the hard negative
(:mod:`.relabel`) -> ``OUTPUT/dataset`` (rows of the ``short_long`` family, with the passage ids and the decision),
``report.json``, ``rejected.jsonl`` and ``passages.jsonl``.

Only the corpus's documents are read: never queries or relevance labels, even when the folder has them. Both steps
journal every answer (``OUTPUT/journal``, ``OUTPUT/judge``), so a rerun, a larger ``--num-examples`` or a changed
corpus pays only for what is new.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Optional

from ..errors import E5MistralError
from ..llm.answers import Rejected
from ..llm.ask import ask
from ..llm.settings import EndpointArguments
from ..mining.hard_negatives import teacher_cache
from ..options import option
from ..output_folders import check_apart
from ..text import match_key
from .corpus import CorpusColumns, Passage, chunk, draw, read_documents
from .queries import FAMILY, parse_query, prompt_version, query_request, sample_slots
from .relabel import NEGATIVE_CHOICES, RelabelSettings, relabel


logger = logging.getLogger(__name__)
RUN_FILE = "adapt.json"  # the settings of the run that wrote OUTPUT; marks the folder as this command's
EXTRA_COLUMNS = ("passage_id", "positive_passage_id", "negative_passage_id", "relabel")


@dataclass
class AdaptArguments(EndpointArguments):
    HELP_GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "corpus": ("corpus", "text_column", "id_column", "title_column", "split", "chunk_tokens", "chunk_overlap"),
        "what to generate": (
            "output",
            "task",
            "num_examples",
            "queries_per_passage",
            "seed",
            "temperature",
            "sampling_seed",
        ),
        "relabelling (step 2)": (
            "teacher",
            "teacher_query_prompt",
            "no_relabel",
            "candidates",
            "positives_to_judge",
            "negatives",
            "negative_rank",
            "negatives_to_judge",
        ),
    }
    corpus: Optional[str] = option(
        "the documents: a BEIR folder (corpus.jsonl), a .jsonl/.parquet/.csv file with a text column, a datasets "
        "folder or Hub id, or a folder of .txt/.md (and .pdf) files (on the command line also as the first argument)",
        None,
    )
    output: Optional[str] = option("folder for the run (dataset/, report.json, journals); rerunning resumes", None)
    text_column: str = option("column of the document text (tables and datasets)", "text")
    id_column: Optional[str] = option("column of the document id (default: _id, id, doc_id or the row number)", None)
    title_column: Optional[str] = option("column of the document title (default: title, when present)", None)
    split: str = option("split of a datasets corpus", "train")
    chunk_tokens: int = option("passage length in tokens of the teacher's tokenizer (all-MiniLM-L6-v2 reads 256)", 256)
    chunk_overlap: int = option("tokens shared by neighbouring passages of one document", 32)
    task: Optional[str] = option(
        "the retrieval task the queries are for, as an instruction (e.g. 'Given a news headline, retrieve tweets "
        "about the same story'); default: the LLM writes a task for each passage",
        None,
    )
    num_examples: int = option("queries to generate", 100)
    queries_per_passage: int = option("queries per drawn passage (GPL: several help small corpora)", 1)
    seed: int = option("seed of the passage draw and the query slots", 0)
    temperature: float = option("sampling temperature of step 1", 1.0)
    top_p: float = option("nucleus sampling of step 1", 1.0)
    sampling_seed: Optional[int] = option("the endpoint's sampling seed (repeatable answers on llama.cpp, vLLM)", None)
    teacher: Optional[str] = option(
        "sentence-transformers model whose neighbours step 2 judges (default: the bundled all-MiniLM-L6-v2)", None
    )
    teacher_query_prompt: str = option("a fixed prefix for the teacher's queries (e.g. 'query: ')", "")
    no_relabel: bool = option("keep each query's seed passage as its positive without asking the judge", False)
    candidates: int = option("neighbours the teacher retrieves per query", 20)
    positives_to_judge: int = option("neighbours ranked above the seed that the judge may pick as the positive", 3)
    negatives: str = option(
        "hard negatives: llm (a neighbour the judge finds not relevant), mined (the neighbour at --negative-rank, "
        "unjudged) or none",
        "llm",
        choices=list(NEGATIVE_CHOICES),
    )
    negative_rank: int = option("the hard negative is taken from this rank of the neighbours on (0 = closest)", 10)
    negatives_to_judge: int = option("neighbours from --negative-rank on that the judge is asked about", 2)
    generator_license: Optional[str] = option("the generator's licence, stated in the dataset card", None)
    no_progress: bool = option("hide progress bars", False)

    def __post_init__(self):
        super().__post_init__()
        if self.output is None:
            raise E5MistralError("--output is required")
        for name in ("num_examples", "queries_per_passage", "candidates"):
            if getattr(self, name) < 1:
                raise E5MistralError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.negative_rank < self.candidates:
            raise E5MistralError(f"--negative-rank must be between 0 and --candidates - 1 ({self.candidates - 1})")
        if self.task is not None and not self.task.strip():
            raise E5MistralError("--task is empty: give the retrieval task as an instruction, or leave it out")
        if self.negatives not in NEGATIVE_CHOICES:
            raise E5MistralError(f"--negatives must be one of {', '.join(NEGATIVE_CHOICES)}, not {self.negatives!r}")

    def relabel_settings(self) -> RelabelSettings:
        return RelabelSettings(
            teacher_query_prompt=self.teacher_query_prompt,
            candidates=self.candidates,
            positives_to_judge=self.positives_to_judge,
            negatives=self.negatives,
            negative_rank=self.negative_rank,
            negatives_to_judge=self.negatives_to_judge,
            relabel=not self.no_relabel,
        )

    def settings(self) -> dict:
        """What the run was asked, for report.json and the card (the key is never a field, only its variable)."""
        return {k: v for k, v in asdict(self).items() if k != "no_progress"}


def check_judge_needed(args: AdaptArguments, judge) -> None:
    judging = judge is not None and judge.judge_model is not None
    if not judging and args.negatives == "llm":
        raise E5MistralError("--negatives llm needs --judge-model (or choose --negatives mined or none)")
    if not judging and not args.no_relabel:
        raise E5MistralError("relabelling needs --judge-model (or pass --no-relabel to keep the seed passages)")


def prepare_output(args: AdaptArguments) -> Path:
    """The output folder: new, empty, or an earlier run of this command (resumed); never someone else's folder."""
    corpus = Path(args.corpus).expanduser()
    output = check_apart(args.output, [corpus] if corpus.exists() else [])
    if output.is_dir() and any(output.iterdir()) and not (output / RUN_FILE).is_file():
        raise E5MistralError(
            f"--output {args.output} is not empty and was not written by e5-mistral adapt; choose a new folder"
        )
    output.mkdir(parents=True, exist_ok=True)
    return output


def load_passages(args: AdaptArguments, teacher: str) -> list[Passage]:
    """The corpus's passages, windows of the teacher's tokens; the corpus is read before any model is loaded."""
    from transformers import AutoTokenizer

    columns = CorpusColumns(args.text_column, args.id_column, args.title_column)
    documents = read_documents(args.corpus, columns, args.split)
    try:
        tokenizer = AutoTokenizer.from_pretrained(teacher)
    except (OSError, ValueError) as err:
        raise E5MistralError(
            f"could not load the tokenizer of --teacher {teacher!r}: {' '.join(str(err).split())[:200]}"
        )
    return chunk(documents, tokenizer, args.chunk_tokens, args.chunk_overlap)


def generate_queries(args: AdaptArguments, drawn: list[Passage], output: Path) -> tuple[list[dict], Counter, dict]:
    """Step 1: (rows with task, query and passage id; reject reasons; the counts of the requests)."""
    specs = [(p, n) for p in drawn for n in range(args.queries_per_passage)][: args.num_examples]

    def build(params: dict) -> list:
        if args.sampling_seed is not None:
            params = {**params, "sampling_seed": args.sampling_seed}
        return [query_request(p, n, args.seed, params, args.task) for p, n in specs]

    sampling = {"temperature": args.temperature, "top_p": args.top_p}
    requests, records, counts = ask(
        args, output, sampling, build, "e5-mistral adapt", desc="queries", hide_progress=args.no_progress
    )
    rows, rejected, seen = [], Counter(), set()
    with open(output / "rejected.jsonl", "w", encoding="utf-8") as rejects:
        for (passage, number), request, record in zip(specs, requests, records):
            try:
                task, query = parse_query(record, passage, args.task)
            except Rejected as err:
                rejected[err.reason] += 1
                if record is not None and err.reason != "failed":
                    raw = {"passage_id": passage.passage_id, "reason": err.reason, "raw": record["content"]}
                    rejects.write(json.dumps(raw, ensure_ascii=False) + "\n")
                continue
            if match_key(query) in seen:
                rejected["duplicate_query"] += 1
                continue
            seen.add(match_key(query))
            rows.append(
                {
                    "request_id": request.request_id,
                    "task": task,
                    "query": query,
                    "passage_id": passage.passage_id,
                    "slots": sample_slots(passage, number, args.seed),
                    "generator_model": record["model"] or args.model,
                }
            )
    return rows, rejected, counts


def adapt(args: AdaptArguments, judge=None) -> dict:
    """Run (or resume) the adaptation of ``args.corpus`` into ``args.output``; returns the report."""
    from ..evaluation.evaluate import load_model
    from ..hub.writer import write_hub_folder, write_json

    if not args.corpus:
        raise E5MistralError("the corpus is required (CORPUS, or --corpus)")
    check_judge_needed(args, judge)
    if judge is not None and judge.judge_model is not None:
        from ..mining.judge import check_judge

        check_judge(judge)
    args.check_endpoint()
    output = prepare_output(args)
    teacher = args.teacher
    if teacher is None:
        from ..local_models import minilm_path

        teacher = str(minilm_path())
    passages = load_passages(args, teacher)
    drawn = draw(passages, math.ceil(args.num_examples / args.queries_per_passage), args.seed)
    changed = _corpus_changes(output, passages)
    write_json(output / RUN_FILE, {**args.settings(), "teacher": teacher, "prompt_version": prompt_version(args.task)})
    _write_passages(output / "passages.jsonl", drawn)
    rows, rejected, query_counts = generate_queries(args, drawn, output)
    texts = {p.passage_id: p.text for p in passages}
    cache = teacher_cache(output, teacher, "neighbours")
    model = lambda: load_model(teacher, flag="--teacher")  # noqa: E731 - loaded only when neighbours are searched
    relabelled, relabel_counts = relabel(rows, texts, model, args.relabel_settings(), judge, output / "judge", cache)
    report = run_report(
        {
            "corpus": {"source": str(args.corpus), "passages": len(passages), "drawn": len(drawn), **changed},
            "teacher": teacher,
            "queries": {"planned": min(args.num_examples, len(drawn) * args.queries_per_passage), **query_counts},
            "accepted_queries": len(rows),
            "rejected": dict(sorted(rejected.items())),
            "relabel": relabel_counts,
            "rows": len(relabelled),
            "settings": args.settings(),
        }
    )
    write_json(output / "report.json", report)
    settings = {"temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens, "seed": args.seed}
    dataset_rows = (_dataset_row(r, texts, prompt_version(args.task)) for r in relabelled)
    write_hub_folder(
        dataset_rows,
        output / "dataset",
        report,
        {**settings, "generator_license": args.generator_license},
        extra_columns=EXTRA_COLUMNS,
    )
    return report


def run_report(adaptation: dict) -> dict:
    """``report.json``: the shape of every run's report (``generate``'s), whose totals the dataset card states and
    ``filter`` carries forward, with the adaptation's own counts under ``adaptation``."""
    queries, reasons = adaptation["queries"], dict(adaptation["rejected"])
    failed, duplicates = reasons.pop("failed", 0), reasons.pop("duplicate_query", 0)
    return {
        "planned": queries["planned"],
        "accepted": adaptation["rows"],
        "rejected": reasons,
        "duplicates_removed": duplicates,
        "failed": failed,
        **{key: queries.get(key) for key in ("prompt_tokens", "completion_tokens", "estimated_cost_usd")},
        "response_format": {"chosen": queries["response_format"], "refused": {}},
        "adaptation": adaptation,
    }


def _dataset_row(row: dict, texts: dict[str, str], version: str) -> dict:
    """A row of the ``short_long`` family, as generation writes it, with the passage ids and the decision."""
    negative = row["negative_passage_id"]
    return {
        "request_id": row["request_id"],
        "family": FAMILY,
        "task": row["task"],
        "language": "",
        "slots": row["slots"],
        "template_version": version,
        "generator_model": row["generator_model"],
        "user_query": row["query"],
        "positive_document": texts[row["positive_passage_id"]],
        "hard_negative_document": texts[negative] if negative is not None else None,
        **{k: row.get(k) for k in EXTRA_COLUMNS},
    }


def _corpus_changes(output: Path, passages: list[Passage]) -> dict:
    """How the passages drawn by the last run into this folder differ in the corpus now (other text, or gone),
    logged in one line; a different --num-examples is no change."""
    previous = output / "passages.jsonl"
    if not previous.is_file():
        return {}
    now = {p.passage_id: p.digest for p in passages}
    changed = gone = 0
    for line in previous.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        gone += record["passage_id"] not in now
        changed += now.get(record["passage_id"], record["digest"]) != record["digest"]
    if changed or gone:
        logger.warning(
            "the corpus changed since the last run into this folder: %d passages drawn then have other text now "
            "(their queries are asked again), %d are gone from it; answers for the rest are reused",
            changed,
            gone,
        )
    return {"changed_since_last_run": changed, "gone_since_last_run": gone}


def _write_passages(path: Path, drawn: list[Passage]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for p in drawn:
            record = {"passage_id": p.passage_id, "doc_id": p.doc_id, "digest": p.digest, "text": p.text}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
