"""``e5-mistral quickstart-adapt CORPUS``: adapt an embedder to a corpus, offline on 2 CPU cores, and score it on the
corpus's own test queries before and after.

Every step runs the public command a user would run (printed before it runs) and is skipped when its output is on
disk, so a rerun resumes:

1. generate  llama.cpp's server on 127.0.0.1 with Qwen2.5-Coder-0.5B-Instruct, then `e5-mistral adapt CORPUS`: a
             query per drawn passage, its hard negative mined by all-MiniLM-L6-v2 (``--judge`` adds the LLM judge)
2. train     each student on those rows: all-MiniLM-L6-v2 (full fine-tuning, mean pooling, no instructions) and, with
             ``--students minilm smollm2``, SmolLM2-135M-Instruct (LoRA, the paper's way)
3. export    each trained student as a sentence-transformers folder
4. evaluate  when CORPUS is a BEIR folder with queries.jsonl and qrels/test.tsv: each student before and after on
             those queries, with paired intervals (the queries and labels are read here only, never by steps 1-3)
"""

from __future__ import annotations

import json
import signal
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..cli import CommandParser, run
from ..errors import E5MistralError, MissingFileError
from ..options import option
from ..precision import fit_recipe_to_cpu
from ..quickstart import (
    LLAMA_CPP_SAMPLING,
    SAMPLING_SEED,
    TRAIN_ON_CPU,
    Step,
    _e5,
    collect_scores,
    evaluate_commands,
    evaluation_inputs,
    print_step_times,
)
from ..resources import resource


@dataclass(frozen=True)
class Student:
    """A model the demo adapts: its recipe, where its starting point comes from, how it is scored."""

    name: str
    recipe: str
    instructions: str  # evaluate --instructions: "none" for a model trained and scored on bare queries
    label: str
    # float32 for the small encoder: as fast as bf16 on a CPU with bf16 units (bf16 is used only where it has them)
    eval_dtype: str = "float32"

    def starting_point(self) -> Path:
        from .. import local_models

        return local_models.minilm_path() if self.name == "minilm" else local_models.smollm2_path()


STUDENTS = {
    "minilm": Student("minilm", "recipes/all-minilm-l6-v2/adapt.yaml", "none", "all-MiniLM-L6-v2"),
    "smollm2": Student("smollm2", "recipes/smollm2-135m/adapt.yaml", "paper", "SmolLM2-135M", "bfloat16"),
}
QUERY_MAX_TOKENS = 256  # a task and a query: a few dozen tokens; a cut answer is rejected
GENERIC_EXPORT = Path("outputs/quickstart/export")  # where `make quickstart` leaves its model


@dataclass
class AdaptQuickstartArguments:
    corpus: Optional[str] = option(
        "the documents: a BEIR folder (its queries.jsonl and qrels/test.tsv, when present, are used to score only), "
        "or anything `e5-mistral adapt` reads (on the command line also as the first argument)",
        None,
    )
    output_dir: Optional[str] = option(
        "where every step writes (default: outputs/adapt-NAME); rerunning resumes", None
    )
    students: list[str] = option(
        "models to adapt: minilm (all-MiniLM-L6-v2) and/or smollm2 (SmolLM2-135M-Instruct, LoRA)",
        default_factory=lambda: ["minilm"],
    )
    task: Optional[str] = option(
        "the retrieval task the corpus serves, as an instruction ('Given a news headline, retrieve tweets about the "
        "same story'): queries are written for it; default: the LLM writes a task per passage",
        None,
    )
    num_examples: int = option("queries to generate (about 6 s each on 2 cores)", 100)
    negatives: str = option(
        "hard negatives without --judge: none (in-batch negatives only) or mined (all-MiniLM-L6-v2's neighbour at "
        "rank 10: the corpus is encoded first, about 14 minutes for SciFact's on 2 cores)",
        "none",
        choices=["none", "mined"],
    )
    judge: bool = option(
        "let the local LLM judge positives and negatives too (step 2 of `e5-mistral adapt`; about 3 requests a "
        "query more)",
        False,
    )
    generator: str = option(
        "the local LLM: qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, or a .gguf file", "qwen2.5-coder-0.5b"
    )
    generator_servers: int = option("llama.cpp servers of one thread each (one per core)", 2)
    base_url: Optional[str] = option(
        "an OpenAI-compatible endpoint serving --generator to use instead of starting llama.cpp here", None
    )
    seed: int = option("seed of the passage draw and the query slots", 0)
    train_seed: Optional[int] = option("training seed (default: the recipe's)", None)
    baseline: Optional[str] = option(
        "an exported decoder to score beside SmolLM2 (default: the generic quickstart's outputs/quickstart/export, "
        "when present)",
        None,
    )
    eval_max_rows: Optional[int] = option("score this many test queries only, for quick runs (default: all)", None)

    def __post_init__(self):
        unknown = [s for s in self.students if s not in STUDENTS]
        if unknown or not self.students:
            raise E5MistralError(f"--students takes {', '.join(STUDENTS)}, got {', '.join(unknown) or 'none'}")
        if self.num_examples < 1:
            raise E5MistralError(f"--num-examples must be at least 1, got {self.num_examples}")


def generate(args: AdaptQuickstartArguments, out: Path, step: Step) -> Path:
    """Serve the local generator on 127.0.0.1 and run `e5-mistral adapt`; returns the dataset folder."""
    from ..local_models import generator_gguf, generator_license
    from ..local_server import llama_cpp_pool

    target = out / "data"
    argv = [
        "adapt",
        str(Path(args.corpus).resolve()),
        "--output",
        str(target),
        "--model",
        args.generator,
        "--num-examples",
        str(args.num_examples),
        "--seed",
        str(args.seed),
        "--max-tokens",
        str(QUERY_MAX_TOKENS),
        "--concurrency",
        str(args.generator_servers),
        "--timeout",
        "600",
        "--max-attempts",
        "2",
        "--sampling-seed",
        str(SAMPLING_SEED),
        "--extra-body",
        json.dumps(LLAMA_CPP_SAMPLING),
        "--no-progress",
        *(["--task", args.task] if args.task else []),
    ]
    if args.judge:  # the same local LLM, greedy; its prompt cache off for answers that do not depend on the server
        argv += ["--judge-model", args.generator, "--judge-concurrency", str(args.generator_servers)]
        argv += ["--judge-extra-body", json.dumps({"cache_prompt": False}), "--judge-timeout", "600"]
    else:
        argv += ["--no-relabel", "--negatives", args.negatives]
    license_line = generator_license(args.generator)
    argv += ["--generator-license", license_line] if license_line else []
    # `adapt` resumes from its journals, so a changed setting pays only for what it changes
    if step.cached("generate", target / "dataset" / "README.md", [*argv, args.base_url, Path(args.corpus).resolve()]):
        return target / "dataset"
    started = time.monotonic()
    with ExitStack() as stack:
        base_url = args.base_url
        if base_url is None:
            gguf = generator_gguf(args.generator)
            print(f"\n[generate] starting {args.generator_servers} llama.cpp servers on 127.0.0.1 for {gguf}")
            base_url = stack.enter_context(llama_cpp_pool(gguf, args.generator_servers, log_dir=out))
        step.timings["generate"] = time.monotonic() - started
        judge_url = ["--judge-base-url", base_url] if args.judge else []
        step.command("generate", _e5(*argv, "--base-url", base_url, *judge_url))
    return target / "dataset"


def training_config(student: Student, dataset: Path, out: Path) -> Path:
    """The student's recipe with its data pointed at ``dataset``, written to OUT/train-NAME.yaml."""
    import yaml

    recipe = resource(student.recipe)
    if not recipe.is_file():
        raise MissingFileError(f"training recipe {recipe} not found")
    config = fit_recipe_to_cpu(yaml.safe_load(recipe.read_text()))
    config["dataset_mixture"] = [{**entry, "path": str(dataset)} for entry in config["dataset_mixture"]]
    path = out / f"train-{student.name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def train_and_export(args, student: Student, dataset: Path, out: Path, step: Step) -> Path:
    """The adapted student's sentence-transformers folder (made again when the data, recipe or seed changed)."""
    checkpoint, export = out / f"model-{student.name}", out / f"export-{student.name}"
    config = training_config(student, dataset, out)
    argv = [str(config), "--model_name_or_path", str(student.starting_point()), "--output_dir", str(checkpoint)]
    argv += ["--seed", str(args.train_seed)] if args.train_seed is not None else []
    if not step.cached("train", checkpoint / "e5_mistral_config.json", [*argv, config, dataset]):
        step.command("train", [*TRAIN_ON_CPU, *argv])
    argv = ["export", str(checkpoint), str(export), "--overwrite"]
    if not step.cached("export", export / "modules.json", [*argv, checkpoint]):
        step.command("export", _e5(*argv))
    return export


def starting_export(student: Student, out: Path, step: Step) -> Path:
    """What the student is before adaptation, as sentence-transformers loads it (the decoder: its raw export)."""
    if student.name == "minilm":
        return student.starting_point()
    import yaml

    export = out / f"export-{student.name}-before"
    length = yaml.safe_load(resource(student.recipe).read_text())["max_seq_length"]  # read as far as trained
    argv = ["export", str(student.starting_point()), str(export), "--overwrite", "--max-seq-length", str(length)]
    if not step.cached("export", export / "modules.json", argv):
        step.command("export", _e5(*argv))
    return export


def evaluate(args, columns: dict[str, Path], student: Student, out: Path, step: Step) -> str:
    """Score ``columns`` (first: the starting point) on the corpus's test queries; returns the table."""
    from ..evaluation.cli import main as evaluate_main
    from ..evaluation.evaluate import markdown_table

    corpus = Path(args.corpus).resolve()
    extra = ["--instructions", student.instructions]
    extra += ["--max-rows", str(args.eval_max_rows)] if args.eval_max_rows else []
    runs = [(f"eval-{student.name}", corpus.parent, [corpus.name], extra)]
    commands = evaluate_commands(columns, runs, out, dtype=student.eval_dtype)
    for summary, argv in commands:
        if not step.cached("evaluate", summary, evaluation_inputs(argv, columns)):
            step.call("evaluate", argv, evaluate_main)
    table, paired = collect_scores(commands, columns)
    return markdown_table(table, [corpus.name], paired)


def has_test_queries(corpus: Path) -> bool:
    return (corpus / "queries.jsonl").is_file() and (corpus / "qrels" / "test.tsv").is_file()


def adapt_quickstart(args: AdaptQuickstartArguments) -> int:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # unwind: the servers stop
    if not args.corpus:
        raise E5MistralError("the corpus is required (CORPUS, or --corpus)")
    corpus = Path(args.corpus).expanduser().resolve()
    if not corpus.exists():
        raise MissingFileError(f"corpus {args.corpus} not found")
    out = Path(args.output_dir or f"outputs/adapt-{corpus.name}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    step, began = Step(timings, out), time.monotonic()
    dataset = generate(args, out, step)
    tables = []
    for name in args.students:
        student = STUDENTS[name]
        columns = {f"{student.label} (before)": starting_export(student, out, step)}
        columns[f"{student.label} adapted (after)"] = train_and_export(args, student, dataset, out, step)
        baseline = Path(args.baseline) if args.baseline else GENERIC_EXPORT.resolve()
        if name == "smollm2" and (baseline / "modules.json").is_file():
            columns[f"{student.label} on generic data ({baseline})"] = baseline
        if has_test_queries(corpus):
            tables.append(evaluate(args, columns, student, out, step))
    if not tables:
        print(f"\n{corpus} has no queries.jsonl and qrels/test.tsv: nothing to score; the adapted models are in {out}")
    text = "\n\n".join(tables)
    print("\n" + text)
    print_step_times(timings, began)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"seconds": timings, "tables": tables}, indent=2))
    return 0


def main(argv=None, prog: str = "e5-mistral quickstart-adapt") -> int:
    from ..cli import fail

    parser = CommandParser([AdaptQuickstartArguments], prog=prog, description=__doc__.splitlines()[0])
    try:
        (args,) = parser.parse_with_dataset(argv, "adapt", field="corpus")
    except E5MistralError as err:
        return fail(prog, err, code=2)
    return run(prog, adapt_quickstart, args)
