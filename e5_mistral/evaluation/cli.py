"""``e5-mistral evaluate MODEL [MODEL ...] --tasks T1 T2 ... --output DIR [options]``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

from ..options import LOAD_DTYPES, option


DESCRIPTION = (
    "Evaluate one or more sentence-transformers models (folders or Hub ids) with mteb. Results go to OUTPUT in "
    "mteb's results format, plus OUTPUT/summary.json (task -> mteb main_score, 0-1) and a markdown table with a "
    "column per model."
)


@dataclass
class EvaluateArguments:
    HELP_GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "what to evaluate": ("tasks", "output", "benchmarks_dir", "instructions"),
        "quick runs": ("max_rows", "corpus_per_query", "subsets"),
        "encoding": (
            "batch_size",
            "dtype",
            "max_seq_length",
            "classification_embeddings",
            "truncate_dim",
            "rope_theta",
            "devices",
        ),
    }
    tasks: list[str] = option(
        "Task names: folders of --benchmarks-dir, else mteb task names (downloaded from the Hub)."
    )
    output: str = option("Folder for mteb's results, summary.json and summary.md.")
    benchmarks_dir: Optional[str] = option(
        "Folder of offline tasks: task X is read from DIR/X/ (see docs/evaluation.md).", None
    )
    instructions: str = option(
        "'paper': the paper's per-task instructions (queries only for retrieval, every input otherwise); "
        "'none': no instruction (models trained without them).",
        "paper",
        choices=["paper", "none"],
    )
    batch_size: int = option("Encoding batch size.", 32)
    max_rows: Optional[int] = option(
        "Subsample each offline task deterministically to N pairs / test rows / queries, for quick runs. "
        "Scores on subsets are not comparable to published ones.",
        None,
    )
    corpus_per_query: int = option(
        "With --max-rows, retrieval keeps this many other documents per kept query (besides the relevant ones).", 10
    )
    classification_embeddings: str = option(
        "What classification tasks are scored on: 'unnormalized', the embeddings before the model's final "
        "Normalize, as the paper evaluates; 'normalized', the model's own output, as mteb (and the published "
        "scores of models such as MiniLM).",
        "unnormalized",
        choices=["unnormalized", "normalized"],
    )
    subsets: Optional[list[str]] = option(
        "Only these subsets of tasks that have several (e.g. Tatoeba's deu-eng fra-eng); "
        "single-subset tasks run whole.",
        None,
    )
    dtype: str = option("Model weights dtype.", "auto", choices=list(LOAD_DTYPES))
    max_seq_length: Optional[int] = option("Truncate inputs to this many tokens.", None)
    devices: Optional[list[str]] = option(
        "Encode on these devices, one process each (e.g. cuda:0 cuda:1; cpu cpu), through "
        "sentence-transformers' multi-process pool (default: one process).",
        None,
    )
    rope_theta: Optional[float] = option(
        "Load the models with this RoPE base (the paper's context extension: 10^4 -> 10^5).", None
    )
    truncate_dim: Optional[int] = option(
        "Score the first N dimensions of every embedding (a Matryoshka-trained model's sizes).", None
    )


def main(argv: Sequence[str] | None = None, prog: str = "e5-mistral evaluate") -> int:
    from ..cli import CommandParser, run

    parser = CommandParser([EvaluateArguments], prog=prog, description=DESCRIPTION)
    parser.add_argument("models", nargs="+", metavar="MODEL", help="sentence-transformers folder(s) or Hub id(s)")
    args, positionals = parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from .evaluate import evaluate

    def _evaluate() -> int:
        evaluate(
            positionals.models,
            args.tasks,
            args.output,
            benchmarks_dir=args.benchmarks_dir,
            instructions=args.instructions,
            batch_size=args.batch_size,
            max_rows=args.max_rows,
            dtype=args.dtype,
            max_seq_length=args.max_seq_length,
            subsets=args.subsets,
            corpus_per_query=args.corpus_per_query,
            classification_embeddings=args.classification_embeddings,
            truncate_dim=args.truncate_dim,
            devices=args.devices,
            rope_theta=args.rope_theta,
        )
        return 0

    return run(prog, _evaluate)
