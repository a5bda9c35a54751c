"""What makes generated data teach more: the method at CPU scale, one lever at a time, against the seed spread.

SmolLM2-135M-Instruct is trained with the quickstart's recipe on what a local Qwen2.5-Coder writes, and scored on
the full STSBenchmark test set and on SICK-R, beside all-MiniLM-L6-v2 on the same items. Each cell changes one
thing (the amount of data, the generator, the training, the ranking-consistency filter, mined negatives, merging,
and in the capacity cells the student: full fine-tuning, LoRA rank, input length, a 0.5B backbone) and is trained
under two seeds.

    python -m benchmarks.method_study --benchmarks-dir ../shared/benchmarks            # every cell, then the page
    python -m benchmarks.method_study --benchmarks-dir ../shared/benchmarks --cells base-100 data-300
    python -m benchmarks.method_study --benchmarks-dir ../shared/benchmarks --wide     # + retrieval, classification
    python -m benchmarks.method_study --report-only                                   # the page from saved scores

Every stage is cached under ``--output`` (default ``outputs/study``) and skipped when its result is there, so the
study runs in pieces. What it needs to go on without that folder is kept in ``benchmarks/study_data/``: each
generated dataset (the Hub layout, ``report.json``, ``rejected.jsonl``), the LLM judge's ``report.json`` and
``dropped.jsonl`` and ``scores.json``, every score so far. A dataset found there is not generated again. The page
is ``docs/study.md`` with its plot ``docs/study.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]
STUDY_DATA = REPO_ROOT / "benchmarks" / "study_data"
SCORES = STUDY_DATA / "scores.json"
PAGE = REPO_ROOT / "docs" / "study.md"
PLOT = REPO_ROOT / "docs" / "study.png"
SEEDS = (42, 7)
# (task, rows): STSBenchmark's whole test set; SICK-R's 9,927 pairs would cost about 12 minutes a model on 2 cores,
# so an evenly spread 1,000 of them, as the quickstart evaluates (a Spearman correlation's standard error is about
# 0.02 there). all-MiniLM-L6-v2 is scored on the same items.
TASKS = (("STSBenchmark", None), ("SICK-R", 1000))
# Beyond STS (--wide): retrieval and classification on their whole test sets, about 8 minutes a model, so for the
# cells of the amount question only; encoded in bfloat16, as the quickstart does.
WIDE_TASKS = (("SciFact", None), ("Banking77Classification", None))
WIDE_CELLS = ("lr-2e-3-90-100", "data-300-lr-2e-3-90", "data-1000-lr-2e-3-90", "subset-100-of-1000-lr-2e-3-90")
WIDE_DTYPE = "bfloat16"
REFERENCE = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Cell:
    """One configuration: its data, its training changes, and the question it answers."""

    name: str
    question: str
    generator: str = "qwen2.5-coder-0.5b"
    examples: int = 100
    filter_top_k: int | None = None
    judge: str | None = None  # an LLM (a local generator's name) that drops rows whose positive it finds off the query
    mined: bool = False
    merge: bool = False  # also score the linear merge of the two seeds' adapters
    recipe: dict = field(default_factory=dict)  # overrides of the quickstart recipe
    entries: dict = field(default_factory=dict)  # family -> settings of its training mixture entry
    languages: dict | None = None  # generation: language -> weight (default: the quickstart's ten)
    family_mix: dict | None = None  # generation: family -> weight (default: even)
    temperature: float = 1.0  # generation: the local LLM's sampling temperature (the paper's 1.0)
    data_tag: str = ""  # names a dataset generated with other languages or family mix
    student: str = "smollm2-135m"  # the backbone trained: SmolLM2, or a local generator's name (its GGUF converted)
    max_length: int = 64  # tokens a text is cut to, in training (max_seq_length) and in the exported model

    @property
    def data(self) -> str:
        return f"{self.generator}-{self.examples}{self.data_tag}"


ALL_LAYERS = list(range(30))
ENGLISH = {"English": 1.0}
ENGLISH_FAMILIES = {"short_long": 1, "long_short": 1, "short_short": 1, "long_long": 1, "sts": 1}
EVEN_WEIGHTS = {"long_short": {"sampling_ratio": 1.0}, "bitext": {"sampling_ratio": 1.0}}  # the recipe: 2x, 3x
SYMMETRIC_INSTRUCTED = {"sts": {"instructed_documents": True}, "bitext": {"instructed_documents": True}}
# 97 of the 1,000's 882 accepted rows, each family keeping the recipe's weight (long-short 2, bitext 3, others 1)
SUBSET_OF_1000 = {
    family: {"sampling_ratio": round(weight * 97 / 882, 3)}
    for family, weight in {**dict.fromkeys(ENGLISH_FAMILIES, 1), "long_short": 2, "bitext": 3}.items()
}
LR_2E_3 = {"learning_rate": 2.0e-3}
LR_2E_3_90 = {**LR_2E_3, "max_steps": 90, "bf16": True}
STUDY_CELLS = (
    Cell("base-100", "the quickstart's recipe on 100 examples (reference)", merge=True),
    Cell("filter-100", "ranking-consistency filter (MiniLM, top 3) on the 100", filter_top_k=3),
    Cell("data-300", "amount: 300 examples", examples=300),
    Cell("gen-1.5b-100", "generator: Qwen2.5-Coder-1.5B at 100 examples", generator="qwen2.5-coder-1.5b"),
    Cell("data-300-lr-2e-3", "amount: 300 examples at learning rate 2e-3", examples=300, recipe=LR_2E_3),
    Cell(
        "steps-300-lr-2e-3",
        "training: 90 steps instead of 45 on the 300 (lr 2e-3)",
        examples=300,
        recipe={**LR_2E_3, "max_steps": 90},
    ),
    Cell(
        "lora-all-300-lr-2e-3",
        "training: LoRA on all 30 layers instead of the top 10, on the 300 (lr 2e-3)",
        examples=300,
        recipe={**LR_2E_3, "lora_layers_to_transform": ALL_LAYERS},
    ),
    Cell(
        "mined-300-lr-2e-3",
        "3 negatives mined by MiniLM added to the 300 (lr 2e-3)",
        examples=300,
        mined=True,
        recipe=LR_2E_3,
    ),
    Cell("tau-0.05-100", "training: temperature 0.05 instead of 0.02", recipe={"temperature": 0.05}),
    Cell("lora-all-100", "training: LoRA on all 30 layers", recipe={"lora_layers_to_transform": ALL_LAYERS}),
    Cell("lr-2e-3-100", "training: learning rate 2e-3 instead of 1e-3", recipe=LR_2E_3),
    Cell("steps-90-100", "training: 90 steps instead of 45", recipe={"max_steps": 90}),
    Cell("even-100", "training: every family weighted 1 (the recipe: bitext 3, long-short 2)", entries=EVEN_WEIGHTS),
    Cell("bf16-100", "training: bf16 autocast (speed)", recipe={"bf16": True}),
    Cell(
        "english-100",
        "generation: English only (and so no bitext, which needs two languages)",
        languages=ENGLISH,
        family_mix=ENGLISH_FAMILIES,
        data_tag="-english",
    ),
    Cell("lr-4e-3-100", "training: learning rate 4e-3", recipe={"learning_rate": 4.0e-3}),
    Cell(
        "english-lr-2e-3-100",
        "English only, five families, at learning rate 2e-3 (the quickstart's)",
        languages=ENGLISH,
        family_mix=ENGLISH_FAMILIES,
        data_tag="-english",
        recipe=LR_2E_3,
    ),
    Cell(
        "lr-2e-3-90-100",
        "training: learning rate 2e-3 and 90 steps, bf16 autocast",
        recipe=LR_2E_3_90,
    ),
    Cell(
        "sym-instr-lr-2e-3-100",
        "training: the instruction on both sides of STS and bitext rows, as they are scored (lr 2e-3)",
        entries=SYMMETRIC_INSTRUCTED,
        recipe=LR_2E_3,
    ),
    Cell(
        "gen-1.5b-lr-2e-3-100",
        "generator: Qwen2.5-Coder-1.5B at 100 examples, learning rate 2e-3",
        generator="qwen2.5-coder-1.5b",
        recipe=LR_2E_3,
    ),
    Cell(
        "gen-t0.7-lr-2e-3-100",
        "generation: temperature 0.7 instead of the paper's 1.0 (lr 2e-3)",
        temperature=0.7,
        data_tag="-t0.7",
        recipe=LR_2E_3,
    ),
    Cell(
        "same-batches-lr-2e-3-100",
        "training: every batch from one family (same_dataset_batches), learning rate 2e-3",
        recipe={**LR_2E_3, "same_dataset_batches": True},
    ),
    Cell(
        "cls-own-lr-2e-3-100",
        "training: classification rows without in-batch negatives (labels repeat across rows), lr 2e-3",
        entries={"long_short": {"in_batch_negatives": False}},
        recipe=LR_2E_3,
    ),
    Cell(
        "sts-x3-lr-2e-3-100",
        "training: STS rows weighted 3 (the recipe: 1), learning rate 2e-3",
        entries={"sts": {"sampling_ratio": 3.0}},
        recipe=LR_2E_3,
    ),
    Cell(
        "tau-0.01-lr-2e-3-100",
        "training: temperature 0.01, learning rate 2e-3",
        recipe={**LR_2E_3, "temperature": 0.01},
    ),
    Cell(
        "batch-16-lr-2e-3-100",
        "training: batch 16 for 30 steps, bf16 autocast (the same training time as batch 8 for 45 in fp32), lr 2e-3",
        recipe={**LR_2E_3, "per_device_train_batch_size": 16, "max_steps": 30, "bf16": True},
    ),
    Cell(
        "bf16-60-lr-2e-3-100",
        "training: 60 steps with bf16 autocast (the same training time as 45 in fp32), lr 2e-3",
        recipe={**LR_2E_3, "max_steps": 60, "bf16": True},
    ),
    Cell(
        "bf16-60-constant-lr-2e-3-100",
        "training: 60 steps with bf16 autocast, learning rate 2e-3 held after warm-up (the recipe: decays to 0)",
        recipe={**LR_2E_3, "max_steps": 60, "bf16": True, "lr_scheduler_type": "constant_with_warmup"},
    ),
    Cell(
        "data-300-lr-2e-3-90",
        "amount: 300 examples, learning rate 2e-3 and 90 steps in bf16 (the best 100-example recipe)",
        examples=300,
        recipe=LR_2E_3_90,
    ),
    Cell(
        "data-1000-lr-2e-3-90",
        "amount: 1,000 examples, learning rate 2e-3 and 90 steps in bf16 (the best 100-example recipe)",
        examples=1000,
        recipe=LR_2E_3_90,
    ),
    Cell(
        "subset-100-of-1000-lr-2e-3-90",
        "amount or draw: 11 % of each family of the 1,000 times its weight (147 rows, drawn with the training seed)",
        examples=1000,
        entries=SUBSET_OF_1000,
        recipe=LR_2E_3_90,
    ),
    Cell(
        "steps-180-1000-lr-2e-3",
        "training: 180 steps instead of 90 on the 1,000 (lr 2e-3, bf16)",
        examples=1000,
        recipe={**LR_2E_3_90, "max_steps": 180},
    ),
    Cell(
        "lora-all-1000-lr-2e-3-90",
        "training: LoRA on all 30 layers instead of the top 10, on the 1,000 (lr 2e-3, 90 steps, bf16)",
        examples=1000,
        recipe={**LR_2E_3_90, "lora_layers_to_transform": ALL_LAYERS},
    ),
    Cell(
        "judged-1.5b-lr-2e-3-90-100",
        "LLM judge: Qwen2.5-Coder-1.5B drops the 0.5B's rows whose positive it finds off the query (lr 2e-3, 90 steps)",
        judge="qwen2.5-coder-1.5b",
        recipe=LR_2E_3_90,
    ),
    Cell(
        "symmetric-lr-2e-3-100",
        "training: symmetric InfoNCE (each positive also against the batch's queries), lr 2e-3",
        recipe={**LR_2E_3, "symmetric_loss": True},
    ),
)


# The student's capacity: each cell changes the model trained, not the data, against a rerun of the best recipe on
# the machine the cells run on (the earlier lr-2e-3-90-100 trained in bf16 on a CPU with bf16 units).
CAPACITY_REFERENCE = "capacity-ref"
QWEN_TOP_THIRD = list(range(16, 24))  # Qwen2.5-0.5B has 24 layers; SmolLM2's recipe adapts its top 10 of 30
CAPACITY_CELLS = (
    Cell(
        CAPACITY_REFERENCE, "the best recipe (lr-2e-3-90-100) trained where the capacity cells are", recipe=LR_2E_3_90
    ),
    Cell(
        "full-ft-lr-1e-4",
        "capacity: full fine-tuning of every weight instead of LoRA, learning rate 1e-4",
        recipe={**LR_2E_3_90, "use_lora": False, "learning_rate": 1.0e-4},
    ),
    Cell(
        "full-ft-lr-2e-5",
        "capacity: full fine-tuning of every weight instead of LoRA, learning rate 2e-5",
        recipe={**LR_2E_3_90, "use_lora": False, "learning_rate": 2.0e-5},
    ),
    Cell(
        "lora-r64",
        "capacity: LoRA rank 64 (alpha 128, the same scale) instead of 16 on the top 10 layers",
        recipe={**LR_2E_3_90, "lora_r": 64, "lora_alpha": 128},
    ),
    Cell(
        "docs-128",
        "capacity: documents read to 128 tokens instead of 64 (queries stay at 64)",
        recipe={**LR_2E_3_90, "query_max_length": 64},
        max_length=128,
    ),
    Cell(
        "docs-256",
        "capacity: documents read to 256 tokens instead of 64 (queries stay at 64)",
        recipe={**LR_2E_3_90, "query_max_length": 64},
        max_length=256,
    ),
    Cell(
        "qwen0.5b-100",
        "capacity: Qwen2.5-Coder-0.5B-Instruct as the student, LoRA on its top third (8 of 24 layers)",
        student="qwen2.5-coder-0.5b",
        recipe={**LR_2E_3_90, "lora_layers_to_transform": QWEN_TOP_THIRD},
    ),
    Cell(
        "qwen0.5b-lr-1e-3-100",
        "capacity: Qwen2.5-Coder-0.5B-Instruct as the student at learning rate 1e-3 (half SmolLM2's)",
        student="qwen2.5-coder-0.5b",
        recipe={**LR_2E_3_90, "learning_rate": 1.0e-3, "lora_layers_to_transform": QWEN_TOP_THIRD},
    ),
    Cell(
        "qwen0.5b-lr-5e-4-100",
        "capacity: Qwen2.5-Coder-0.5B-Instruct as the student at learning rate 5e-4 (a quarter of SmolLM2's)",
        student="qwen2.5-coder-0.5b",
        recipe={**LR_2E_3_90, "learning_rate": 5.0e-4, "lora_layers_to_transform": QWEN_TOP_THIRD},
    ),
    Cell(
        "qwen0.5b-lr-1e-3-1000",
        "capacity: Qwen2.5-Coder-0.5B-Instruct as the student on the 1,000 examples, at its best rate (1e-3)",
        examples=1000,
        student="qwen2.5-coder-0.5b",
        recipe={**LR_2E_3_90, "learning_rate": 1.0e-3, "lora_layers_to_transform": QWEN_TOP_THIRD},
    ),
)
CELLS = STUDY_CELLS + CAPACITY_CELLS


def run(argv: list[str]) -> None:
    print("$ " + " ".join(map(str, argv)), flush=True)
    subprocess.run(list(map(str, argv)), check=True)


E5 = [sys.executable, "-m", "e5_mistral.cli"]


def dataset(cell: Cell, out: Path) -> Path:
    """The cell's generated dataset folder: from benchmarks/study_data, else generated and copied there."""
    from e5_mistral.quickstart import QuickstartArguments, Step, generate

    kept = STUDY_DATA / cell.data
    if not (kept / "dataset" / "README.md").is_file():
        target = out / "data" / cell.data
        settings = QuickstartArguments(
            generator=cell.generator,
            num_examples=cell.examples,
            languages=json.dumps(cell.languages) if cell.languages else None,
            family_mix=json.dumps(cell.family_mix) if cell.family_mix else None,
            temperature=cell.temperature,
        )
        generate(settings, target, Step({}))
        keep(target / "synthetic", ("dataset", "report.json", "rejected.jsonl"), kept)
    return kept / "dataset"


def keep(source: Path, names: tuple[str, ...], kept: Path) -> None:
    """Copy the named files and folders of ``source`` into ``kept`` (under benchmarks/study_data)."""
    kept.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (source / name).is_dir():
            shutil.copytree(source / name, kept / name, dirs_exist_ok=True)
        else:
            shutil.copy2(source / name, kept / name)


def training_data(cell: Cell, out: Path) -> Path:
    data = dataset(cell, out)
    if cell.filter_top_k:
        filtered = out / "filtered" / f"{cell.data}-top{cell.filter_top_k}"
        if not (filtered / "dataset" / "README.md").is_file():
            run([*E5, "filter", data, "--output", filtered, "--top-k", cell.filter_top_k, "--overwrite"])
        data = filtered / "dataset"
    if cell.judge:
        data = judged(data, cell, out)
    if cell.mined:
        mined = out / "mined" / cell.data
        if not (mined / "report.json").is_file():
            run([*E5, "mine", data, "--output", mined, "--num-negatives", 3, "--no-progress"])
        data = mined
    return data


CACHE_OFF = json.dumps({"cache_prompt": False})


def judged(data: Path, cell: Cell, out: Path) -> Path:
    """``data`` less the rows whose positive ``cell.judge`` (served by llama.cpp on 127.0.0.1, greedy) finds off
    their query; its report and dropped rows are kept in benchmarks/study_data."""
    from e5_mistral.local_models import generator_gguf
    from e5_mistral.local_server import llama_cpp_pool

    name = f"{cell.data}-judged-{cell.judge}"
    target = out / "judged" / name
    if not (target / "dataset" / "README.md").is_file():
        with llama_cpp_pool(generator_gguf(cell.judge), 2, log_dir=out / "judged") as base_url:
            argv = [*E5, "filter", data, "--output", target, "--top-k", 0, "--judge-model", cell.judge]
            # cache_prompt off: each verdict is read from its whole prompt, whichever server answers
            run(argv + ["--judge-base-url", base_url, "--judge-concurrency", 2, "--judge-extra-body", CACHE_OFF])
        keep(target, ("report.json", "dropped.jsonl"), STUDY_DATA / name)
    return target / "dataset"


# The recipe every cell starts from: the quickstart's as the study found it (45 steps in fp32, the learning rate
# decaying from 1e-3). What the cells found moved the quickstart's recipe on; the cells keep the reference's values
# unless they change them, so every row compares with the same base.
REFERENCE_RECIPE = {"learning_rate": 1.0e-3, "max_steps": 45, "bf16": False, "lr_scheduler_type": "linear"}


def recipe(cell: Cell, data: Path, folder: Path) -> Path:
    """The quickstart recipe on ``data`` as the reference trains it, with the cell's overrides (and k negatives
    when mined)."""
    import yaml

    from e5_mistral.precision import fit_recipe_to_cpu
    from e5_mistral.quickstart import QuickstartArguments, training_config

    path = training_config(QuickstartArguments(), data, folder, "recipe")
    config = yaml.safe_load(path.read_text())
    config.update(REFERENCE_RECIPE)
    config.update(cell.recipe)
    config["max_seq_length"] = cell.max_length
    for entry in config["dataset_mixture"]:
        entry.update(cell.entries.get(entry["name"], {}))
    if cell.mined:
        config["num_hard_negatives"] = 4  # the row's own negative, then the mined ones
    config = fit_recipe_to_cpu(config)  # a cell's bf16 autocast is emulated, many times slower, without bf16 units
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


TRAIN_SECONDS = STUDY_DATA / "train_seconds.json"


def student_path(cell: Cell) -> Path:
    """The cell's backbone as a plain Hugging Face folder (converted from its GGUF file once)."""
    from e5_mistral.local_models import hf_folder_from_gguf, smollm2_path

    return smollm2_path() if cell.student == "smollm2-135m" else hf_folder_from_gguf(cell.student)


def train(cell: Cell, seed: int, out: Path) -> Path:
    """The cell's checkpoint under ``seed``, trained unless there; its training time is kept in train_seconds.json."""
    from e5_mistral.quickstart import TRAIN_ON_CPU

    folder = out / "runs" / cell.name / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "model" / "e5_mistral_config.json").is_file():
        config = recipe(cell, training_data(cell, out), folder)
        backbone = student_path(cell)
        started = time.monotonic()
        run(
            [*TRAIN_ON_CPU, config, "--model_name_or_path", backbone, "--output_dir", folder / "model", "--seed", seed]
        )
        record_training_time(f"{cell.name}/seed{seed}", time.monotonic() - started)
    return folder / "model"


def record_training_time(key: str, seconds: float) -> None:
    from e5_mistral.precision import cpu_cores

    times = json.loads(TRAIN_SECONDS.read_text()) if TRAIN_SECONDS.is_file() else {}
    times[key] = {"seconds": round(seconds), "cores": cpu_cores()}
    TRAIN_SECONDS.write_text(json.dumps(times, indent=2, sort_keys=True) + "\n")


def export(checkpoint: Path, target: Path, max_length: int = 64) -> Path:
    if not (target / "modules.json").is_file():
        run([*E5, "export", checkpoint, target, "--overwrite", "--max-seq-length", max_length])
    return target


def score(model: Path, key: str, benchmarks: Path, out: Path, scores: dict, tasks=TASKS, **settings) -> dict:
    """{task: score} of one model on ``tasks``, cached in scores.json under ``key`` (``settings``: evaluate's)."""
    from e5_mistral.evaluation.evaluate import evaluate

    result = dict(scores.get(key, {}))
    for task, rows in tasks:
        if task not in result:
            folder = out / "eval" / key / task
            kwargs = {"max_rows": rows, "batch_size": 32, "show_progress_bar": False, **settings}
            result.update(evaluate(str(model), [task], folder, benchmarks, **kwargs))
    if result == scores.get(key):
        return result
    scores[key] = result
    STUDY_DATA.mkdir(parents=True, exist_ok=True)
    SCORES.write_text(json.dumps(scores, indent=2, sort_keys=True) + "\n")
    return result


def run_cell(cell: Cell, benchmarks: Path, out: Path, scores: dict, seeds=SEEDS, tasks=TASKS, **settings) -> None:
    checkpoints = []
    for seed in seeds:
        started = time.monotonic()
        checkpoint = train(cell, seed, out)
        checkpoints.append(checkpoint)
        model = export(checkpoint, checkpoint.parent / "export", cell.max_length)
        score(model, f"{cell.name}/seed{seed}", benchmarks, out, scores, tasks, **settings)
        print(f"[study] {cell.name} seed {seed}: {time.monotonic() - started:.0f} s", flush=True)
    if cell.merge and len(checkpoints) > 1:
        merged = out / "runs" / cell.name / "merged"
        if not (merged / "model" / "e5_mistral_config.json").is_file():
            run([*E5, "merge", *checkpoints, "--output", merged / "model", "--overwrite"])
        model = export(merged / "model", merged / "export")
        score(model, f"{cell.name}/merged", benchmarks, out, scores, tasks, **settings)


def references(benchmarks: Path, out: Path, scores: dict, tasks=TASKS, **settings) -> None:
    """all-MiniLM-L6-v2 and the raw backbone, on the same items."""
    from e5_mistral.local_models import minilm_path, smollm2_path

    score(minilm_path(), REFERENCE, benchmarks, out, scores, tasks, instructions="none")  # as published
    score(export(smollm2_path(), out / "raw-export"), "raw SmolLM2-135M", benchmarks, out, scores, tasks, **settings)


# -- the page ------------------------------------------------------------------------------------------------------
def _scored(values: dict | None, tasks=TASKS) -> bool:
    return values is not None and all(task in values for task, _ in tasks)


def _mean_ratio(values: dict, reference: dict, tasks=TASKS) -> float:
    return sum(values[t] / reference[t] for t, _ in tasks) / len(tasks)


def summary_rows(scores: dict, tasks=TASKS) -> list[dict]:
    """One row per cell (and merged model) scored on ``tasks``: both seeds' mean, spread and MiniLM ratio."""
    reference = scores[REFERENCE] if _scored(scores.get(REFERENCE), tasks) else None
    rows = []
    for cell in STUDY_CELLS:  # the capacity cells have a table of their own
        seeds = [scores[key] for s in SEEDS if _scored(scores.get(key := f"{cell.name}/seed{s}"), tasks)]
        if not seeds:
            continue
        row = {"cell": cell.name, "question": cell.question, "data": cell.data, "seeds": len(seeds)}
        for task, _ in tasks:
            values = [s[task] for s in seeds]
            row[task] = (sum(values) / len(values), max(values) - min(values))
        if reference:
            ratios = [_mean_ratio(s, reference, tasks) for s in seeds]
            row["ratio"] = (sum(ratios) / len(ratios), max(ratios) - min(ratios))
        rows.append(row)
        merged = scores.get(f"{cell.name}/merged")
        if _scored(merged, tasks):
            rows.append(
                {
                    "cell": f"{cell.name} merged",
                    "question": "merging: the linear merge of the two seeds' adapters",
                    "data": cell.data,
                    **{task: (merged[task], 0.0) for task, _ in tasks},
                    **({"ratio": (_mean_ratio(merged, reference, tasks), 0.0)} if reference else {}),
                }
            )
    return rows


def table(scores: dict, tasks=TASKS) -> str:
    """The page's table of every cell scored on ``tasks``, then the references."""
    header = ["cell", "what changes", *[t for t, _ in tasks], f"ratio to {REFERENCE}"]
    lines = ["| " + " | ".join(header) + " |", "| --- | --- |" + " ---: |" * (len(header) - 2)]

    def cell_text(value):
        return "n/a" if value is None else f"{value[0]:.4f} ± {value[1] / 2:.4f}" if value[1] else f"{value[0]:.4f}"

    for row in summary_rows(scores, tasks):
        values = [cell_text(row.get(t)) for t, _ in tasks] + [cell_text(row.get("ratio"))]
        name = row["cell"] + (" (1 seed)" if row.get("seeds") == 1 else "")
        lines.append(f"| {name} | {row['question']} | " + " | ".join(values) + " |")
    for name in (REFERENCE, "raw SmolLM2-135M"):
        if _scored(scores.get(name), tasks):
            lines.append(f"| {name} | reference | " + " | ".join(f"{scores[name][t]:.4f}" for t, _ in tasks) + " | |")
    return "\n".join(lines)


def write_page(scores: dict) -> None:
    main_table, wide_table = table(scores), table(scores, WIDE_TASKS)
    write_between_markers(PAGE, main_table, TABLE_MARKERS)
    write_between_markers(PAGE, wide_table, WIDE_TABLE_MARKERS)
    plot(scores)
    capacity = capacity_table(scores, json.loads(TRAIN_SECONDS.read_text()) if TRAIN_SECONDS.is_file() else {})
    write_between_markers(PAGE, capacity, CAPACITY_TABLE_MARKERS)
    plot_capacity(scores)
    print(main_table + "\n\n" + wide_table + "\n\n" + capacity)


def seed_values(scores: dict, cell: str, task: str) -> list[float]:
    return [scores[k][task] for s in SEEDS if task in scores.get(k := f"{cell}/seed{s}", {})]


def capacity_table(scores: dict, train_seconds: dict) -> str:
    """The capacity cells on every task any of them was scored on: mean ± half the seeds' spread, the seeds
    scored, the difference from the reference's mean, and the mean training time."""
    tasks = [t for t, _ in TASKS + WIDE_TASKS]
    header = ["cell", "what changes", *tasks, "seeds", "training (s)"]
    lines = ["| " + " | ".join(header) + " |", "| --- | --- |" + " ---: |" * (len(header) - 2)]
    for cell in CAPACITY_CELLS:
        counts, texts = set(), []
        for task in tasks:
            values, base = seed_values(scores, cell.name, task), seed_values(scores, CAPACITY_REFERENCE, task)
            counts.add(len(values))
            texts.append(spread_text(values, base if cell.name != CAPACITY_REFERENCE else []))
        if not any(counts - {0}):
            continue
        times = [t["seconds"] for s in SEEDS if (t := train_seconds.get(f"{cell.name}/seed{s}"))]
        time_text = f"{sum(times) / len(times):.0f}" if times else "n/a"
        seeds = "/".join(str(n) for n in sorted(counts - {0}))
        lines.append(f"| {cell.name} | {cell.question} | " + " | ".join(texts) + f" | {seeds} | {time_text} |")
    reference = scores.get(REFERENCE, {})
    lines.append(
        f"| {REFERENCE} | reference | "
        + " | ".join(f"{reference[t]:.4f}" if t in reference else "" for t in tasks)
        + " | | |"
    )
    return "\n".join(lines)


def spread_text(values: list[float], base: list[float]) -> str:
    """``mean ± half-spread`` of one cell's seeds, and its difference from the base cell's mean when both exist."""
    if not values:
        return "—"
    mean = sum(values) / len(values)
    text = f"{mean:.4f}" + (f" ± {(max(values) - min(values)) / 2:.4f}" if len(values) > 1 else "")
    return text + (f" ({mean - sum(base) / len(base):+.4f})" if base else "")


CAPACITY_TABLE_MARKERS = (
    "<!-- capacity table: written by benchmarks/method_study.py -->",
    "<!-- end of capacity table -->",
)
CAPACITY_PLOT = REPO_ROOT / "docs" / "study-capacity.png"


def plot_capacity(scores: dict) -> None:
    """Each capacity cell's seeds on each task, beside the reference cell's mean (a dashed line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t, _ in TASKS + WIDE_TASKS if seed_values(scores, CAPACITY_REFERENCE, t)]
    if not tasks:
        return
    names = [c.name for c in CAPACITY_CELLS]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 0.35 * len(names) + 1.2), sharey=True)
    for ax, task in zip(list(axes) if len(tasks) > 1 else [axes], tasks):
        for row, name in enumerate(names):
            values = seed_values(scores, name, task)
            ax.scatter(values, [row] * len(values), color="tab:blue" if name != CAPACITY_REFERENCE else "black")
        base = seed_values(scores, CAPACITY_REFERENCE, task)
        ax.axvline(sum(base) / len(base), linestyle="--", color="grey")
        if task in scores.get(REFERENCE, {}):
            ax.axvline(scores[REFERENCE][task], linestyle=":", color="tab:green", label=REFERENCE)
            ax.legend(fontsize=7)
        ax.set_title(task)
        ax.set_yticks(range(len(names)), names, fontsize=8)
    fig.tight_layout()
    fig.savefig(CAPACITY_PLOT, dpi=110)


TABLE_MARKERS = ("<!-- study table: written by benchmarks/method_study.py -->", "<!-- end of study table -->")
WIDE_TABLE_MARKERS = ("<!-- wide table: written by benchmarks/method_study.py -->", "<!-- end of wide table -->")


def write_between_markers(page: Path, table: str, markers: tuple[str, str]) -> None:
    """Put ``table`` between the page's ``markers``, added at the end if missing (the prose is written by hand)."""
    start, end = markers
    text = page.read_text(encoding="utf-8") if page.is_file() else "# The method study\n"
    if start not in text:
        text = f"{text.rstrip()}\n\n{start}\n{end}\n"
    before, _, rest = text.partition(start)
    _, _, after = rest.partition(end)
    page.write_text(f"{before}{start}\n\n{table}\n\n{end}{after}", encoding="utf-8")


# The plot's series: the recipes the amount and generator cells were trained with, and how each is drawn.
PLOT_RECIPES = (
    ({}, "lr 1e-3, 45 steps", "none"),
    (LR_2E_3, "lr 2e-3, 45 steps", "half"),
    (LR_2E_3_90, "lr 2e-3, 90 steps", "full"),
)


def plot(scores: dict) -> None:
    """Score against accepted examples, one point per seed, per generator and recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(5 * len(TASKS), 3.6))
    for ax, (task, _) in zip(axes, TASKS):
        for cell in STUDY_CELLS:
            series = next((s for s in PLOT_RECIPES if s[0] == cell.recipe), None)
            plain = not (cell.filter_top_k or cell.judge or cell.mined or cell.entries or cell.data_tag)
            report = STUDY_DATA / cell.data / "report.json"
            if series is None or not plain or not report.is_file():
                continue  # the plot is amount, generator and recipe; the other levers are in the table
            accepted = json.loads(report.read_text())["accepted"]
            values = [scores[k][task] for s in SEEDS if (k := f"{cell.name}/seed{s}") in scores]
            small = "0.5b" in cell.generator
            color = "tab:blue" if small else "tab:green"
            ax.scatter(
                [accepted] * len(values),
                values,
                marker="o" if small else "s",
                facecolors="none" if series[2] == "none" else color,
                alpha=0.5 if series[2] == "half" else 1.0,
                edgecolors=color,
                label=f"{cell.generator}, {series[1]}",
            )
        if REFERENCE in scores:
            ax.axhline(scores[REFERENCE][task], linestyle="--", color="grey", label=REFERENCE)
        if "raw SmolLM2-135M" in scores:
            ax.axhline(scores["raw SmolLM2-135M"][task], linestyle=":", color="grey", label="raw SmolLM2-135M")
        ax.set_title(task)
        ax.set_xscale("log")
        ax.set_xticks([100, 300, 1000], ["100", "300", "1,000"], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_xlabel("accepted generated examples")
        ax.set_ylabel("Spearman (cosine)")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks-dir", type=Path, default=None, help="MTEB-format tasks (../shared/benchmarks)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "outputs" / "study")
    parser.add_argument("--cells", nargs="+", default=None, help=f"cells to run: {', '.join(c.name for c in CELLS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="training seeds (a screen: one)")
    parser.add_argument("--report-only", action="store_true", help="write the page from the saved scores")
    parser.add_argument("--tasks", nargs="+", default=None, help="score only these of the chosen tasks")
    parser.add_argument(
        "--wide",
        action="store_true",
        help=f"score on {', '.join(t for t, _ in WIDE_TASKS)} instead (cells: {', '.join(WIDE_CELLS)} unless --cells)",
    )
    args = parser.parse_args(argv)
    scores = json.loads(SCORES.read_text()) if SCORES.is_file() else {}
    if not args.report_only:
        from e5_mistral.precision import cpu_dtype

        if args.benchmarks_dir is None:
            parser.error("--benchmarks-dir is required to run cells")
        names = args.cells or (WIDE_CELLS if args.wide else [c.name for c in CELLS])
        chosen = [c for c in CELLS if c.name in names]
        unknown = set(args.cells or []) - {c.name for c in CELLS}
        if unknown:
            parser.error(f"unknown cells: {', '.join(sorted(unknown))}")
        tasks, settings = (WIDE_TASKS, {"dtype": cpu_dtype(WIDE_DTYPE)}) if args.wide else (TASKS, {})
        if args.tasks:
            if set(args.tasks) - {t for t, _ in tasks}:
                parser.error(f"--tasks: choose among {', '.join(t for t, _ in tasks)}")
            tasks = tuple(t for t in tasks if t[0] in args.tasks)
        references(args.benchmarks_dir, args.output, scores, tasks, **settings)
        for cell in chosen:
            run_cell(cell, args.benchmarks_dir, args.output, scores, args.seeds, tasks, **settings)
    write_page(scores)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
