"""What corpus adaptation is worth, one lever at a time, against the seed spread: SciFact's corpus only.

The data is two `e5-mistral adapt` runs on SciFact's documents (Qwen2.5-Coder-0.5B-Instruct on llama.cpp, kept in
``benchmarks/adapt_data/``); each cell trains a student on a share of one, under two seeds, and scores it on
SciFact's 300 test queries (nDCG@10; the encoder in float32, SmolLM2 in bf16 where the CPU has bf16 units), with
a paired interval against all-MiniLM-L6-v2 zero-shot on the same queries. The test queries and relevance labels
are read by the scoring only.

    python -m benchmarks.adapt_study --benchmarks-dir ../shared/benchmarks                 # every cell, then the page
    python -m benchmarks.adapt_study --benchmarks-dir ../shared/benchmarks --cells q100 q300
    python -m benchmarks.adapt_study --report-only                                        # the page from saved scores

Models are cached under ``--output`` (default ``outputs/adapt-study``); scores go to
``benchmarks/adapt_data/scores.json`` as each is made, so the study runs in pieces. The page is ``docs/adapt.md``
(between its markers) with the plot ``docs/adapt.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace


REPO_ROOT = Path(__file__).resolve().parents[1]
ADAPT_DATA = REPO_ROOT / "benchmarks" / "adapt_data"  # each adapt run's dataset/, report.json, passages.jsonl
FIRST_RUN = "scifact"  # 300 passages, written with the query prompt's earlier example task
CURRENT_RUN = "scifact-600"  # 600 passages, the query prompt as it is now
TASK_RUN = "scifact-600-task"  # the same 600 passages, with SciFact's search named by the user (`adapt --task`)
SCORES = ADAPT_DATA / "scores.json"
PAGE = REPO_ROOT / "docs" / "adapt.md"
PLOT = REPO_ROOT / "docs" / "adapt.png"
MARKERS = ("<!-- adapt-study table -->", "<!-- end adapt-study table -->")
TASK = "SciFact"
SEEDS = (42, 7)
ZERO_SHOT = "zero-shot"
JUDGE = "qwen2.5-coder-1.5b"  # the 0.5B generator answers "no" to every passage, its own seeds included
JUDGE_JOURNAL = ADAPT_DATA / "judge-1.5b"


@dataclass(frozen=True)
class Cell:
    name: str
    question: str
    passages: int  # rows whose seed passage is among the first N drawn
    student: str = "minilm"
    # mined (rank 10, unjudged), none, or judged (the mined one, kept unless JUDGE finds it relevant)
    negatives: str = "mined"
    interpolate: float = 1.0
    round_trip: bool = False  # `e5-mistral filter --top-k 1`: keep a query only when its passage ranks first
    # the student's recipe with these keys changed, e.g. (("max_seq_length", 256),): documents read that far
    recipe: tuple[tuple[str, object], ...] = ()
    run: str = FIRST_RUN  # the adapt run under ADAPT_DATA whose rows it trains on

    @property
    def data_name(self) -> str:
        negatives = {"mined": "", "none": "-no-negative", "judged": "-judged-negative"}[self.negatives]
        run = "" if self.run == FIRST_RUN else f"{self.run}-"
        return f"{run}{self.passages}{negatives}{'-round-trip' if self.round_trip else ''}"


def _decoder_cell(name: str, data: str, passages: int, steps: int, run: str) -> Cell:
    """SmolLM2 on a later run's share; ``steps`` are two passes over its accepted rows (8 a step), fixed here so a
    cell's recipe never changes with the data it is read beside."""
    question = f"student: SmolLM2-135M on {passages} queries, {data} ({steps} steps)"
    return Cell(name, question, passages, student="smollm2", recipe=(("max_steps", steps),), run=run)


CELLS = (
    Cell("q100", "queries: 100", 100),
    Cell("q200", "queries: 200", 200),
    Cell("q300", "queries: 300", 300),
    Cell("q300-no-negative", "negatives: none (in-batch only)", 300, negatives="none"),
    Cell(
        "q300-judged-negative",
        "negatives: the mined one unless the 1.5B judge finds it relevant (then in-batch only)",
        300,
        negatives="judged",
    ),
    Cell("q300-interpolated", "interpolation with the starting model (0.5)", 300, interpolate=0.5),
    Cell(
        "q300-round-trip",
        "round-trip filter (teacher: MiniLM zero-shot, among the rows' passages)",
        300,
        round_trip=True,
    ),
    Cell("q300-smollm2", "student: SmolLM2-135M (LoRA, instructed)", 300, student="smollm2"),
    # the decoder at two passes over its rows, as q300-smollm2's 70 steps of 8 are over 286
    Cell(
        "q100-smollm2",
        "student: SmolLM2-135M on 100 queries (24 steps)",
        100,
        student="smollm2",
        recipe=(("max_steps", 24),),
    ),
    Cell(
        "q200-smollm2",
        "student: SmolLM2-135M on 200 queries (48 steps)",
        200,
        student="smollm2",
        recipe=(("max_steps", 48),),
    ),
    Cell(
        "q300-smollm2-256",
        "student: SmolLM2-135M, documents read to 256 tokens (not 128)",
        300,
        student="smollm2",
        recipe=(("max_seq_length", 256),),
    ),
    Cell(
        "q300-smollm2-35-steps",
        "student: SmolLM2-135M, 35 training steps (not 70): one pass over the rows",
        300,
        student="smollm2",
        recipe=(("max_steps", 35),),
    ),
    Cell(
        "q300-smollm2-140-steps",
        "student: SmolLM2-135M, 140 training steps (not 70)",
        300,
        student="smollm2",
        recipe=(("max_steps", 140),),
    ),
    # a second adapt run, of 600 passages, written with the current (domain-neutral) query prompt; its first 300
    # drawn passages are the first run's 300, asked again
    Cell("q300-current-prompt", "queries: 300, current prompt", 300, run=CURRENT_RUN),
    Cell("q600-current-prompt", "queries: 600, current prompt", 600, run=CURRENT_RUN),
    _decoder_cell("q300-smollm2-current-prompt", "current prompt", 300, 61, CURRENT_RUN),
    _decoder_cell("q600-smollm2-current-prompt", "current prompt", 600, 120, CURRENT_RUN),
    # a third run over the same 600 passages: the task named (--task), so the LLM writes only the queries
    Cell("q600-task", "queries: 600, task named (--task)", 600, run=TASK_RUN),
    _decoder_cell("q600-smollm2-task", "task named", 600, 92, TASK_RUN),
)


def subset(cell: Cell, out: Path) -> Path:
    """The cell's rows, written in the Hub layout training reads."""
    import pyarrow.parquet as pq

    from e5_mistral.adaptation.run import EXTRA_COLUMNS
    from e5_mistral.hub.writer import write_hub_folder

    target = out / "data" / cell.data_name
    if (target / "README.md").is_file():
        return target
    if cell.round_trip:
        every_row = Cell("all", "", cell.passages, negatives=cell.negatives, run=cell.run)
        return round_trip(subset(every_row, out), target.parent)
    data = ADAPT_DATA / cell.run
    order = [json.loads(line)["passage_id"] for line in (data / "passages.jsonl").read_text().splitlines()]
    drawn = set(order[: cell.passages])
    rows = [r for r in pq.read_table(data / "dataset" / "short_long").to_pylist() if r["passage_id"] in drawn]
    if cell.negatives == "none":
        rows = [{**r, "hard_negative_document": None, "negative_passage_id": None} for r in rows]
    if cell.negatives == "judged":
        rows = without_relevant_negatives(rows, judge_negatives(rows))
    return write_hub_folder(rows, target, {"adaptation": None}, extra_columns=EXTRA_COLUMNS)


def judge_negatives(rows: list[dict]) -> list[bool | None]:
    """The judge's verdict on each row's mined negative (`adapt --negatives llm --negatives-to-judge 1`'s question),
    asked of JUDGE on two single-thread llama.cpp servers; answers are journaled in JUDGE_JOURNAL, so the study pays
    for each once."""
    from e5_mistral.local_models import generator_gguf
    from e5_mistral.local_server import llama_cpp_pool
    from e5_mistral.mining.judge import POSITIVE_PROMPT, JudgeArguments, judge_pairs

    pairs = [(r["task"], r["user_query"], r["hard_negative_document"]) for r in rows]
    with llama_cpp_pool(generator_gguf(JUDGE), 2) as url:
        extra = json.dumps({"cache_prompt": False})  # answers that do not depend on which server took the request
        judge = JudgeArguments(judge_model=JUDGE, judge_base_url=url, judge_concurrency=2, judge_extra_body=extra)
        verdicts, counts = judge_pairs(POSITIVE_PROMPT, pairs, judge, JUDGE_JOURNAL, "adapt study (judge)")
    print(f"[adapt-study] judge: {counts}", flush=True)
    return verdicts


def without_relevant_negatives(rows: list[dict], verdicts: list[bool | None]) -> list[dict]:
    """``rows`` with each negative the judge found relevant removed (a false negative: in-batch negatives only);
    an unanswered one stays, as `mine`'s judge keeps it."""
    cleared = {"hard_negative_document": None, "negative_passage_id": None}
    return [{**r, **cleared} if relevant is True else r for r, relevant in zip(rows, verdicts, strict=True)]


def round_trip(source: Path, out: Path) -> Path:
    """``source`` through `e5-mistral filter --top-k 1` with the zero-shot MiniLM: the rows whose seed passage it
    ranks first for their query, among every row's passages (the filter's candidates)."""
    from e5_mistral.local_models import minilm_path
    from e5_mistral.mining.consistency import FilterArguments, consistency_filter

    output = out / f"{source.name}-round-trip-run"
    if (output / "dataset" / "README.md").is_file():
        return output / "dataset"
    consistency_filter(FilterArguments(dataset=str(source), output=str(output), teacher=str(minilm_path()), top_k=1))
    return output / "dataset"


def model(cell: Cell, seed: int, out: Path) -> Path:
    """The cell's exported student (trained once per seed; an interpolated cell exports the same checkpoint)."""
    from e5_mistral.adaptation.quickstart import train_and_export
    from e5_mistral.quickstart import Step, _e5

    changes = "".join(f"-{key}{value}" for key, value in cell.recipe)
    folder = out / f"{cell.student}-{cell.data_name}{changes}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    step = Step({})
    student = student_for(cell, folder)
    export = train_and_export(SimpleNamespace(train_seed=seed), student, subset(cell, out), folder, step)
    if cell.interpolate == 1.0:
        return export
    target = folder / f"export-{cell.student}-w{cell.interpolate}"
    if not (target / "modules.json").is_file():
        argv = ["export", str(folder / f"model-{cell.student}"), str(target), "--overwrite"]
        step.command("export", _e5(*argv, "--interpolate", str(cell.interpolate)))
    return target


def student_for(cell: Cell, folder: Path):
    """The cell's student, its recipe rewritten with the cell's changes (the export reads documents as far as the
    checkpoint trained)."""
    import dataclasses

    import yaml

    from e5_mistral.adaptation.quickstart import STUDENTS
    from e5_mistral.resources import resource

    student = STUDENTS[cell.student]
    if not cell.recipe:
        return student
    config = yaml.safe_load(resource(student.recipe).read_text())
    recipe = folder / "recipe.yaml"  # an absolute path: resource() returns it as it is
    recipe.write_text(yaml.safe_dump({**config, **dict(cell.recipe)}, sort_keys=False))
    return dataclasses.replace(student, recipe=str(recipe))


def score(path: Path, key: str, student, benchmarks: Path, out: Path, scores: dict) -> None:
    """nDCG@10 on SciFact and the paired difference from the zero-shot MiniLM, saved into ``scores`` (a score kept
    without its difference gets it from its predictions)."""
    from e5_mistral.evaluation.evaluate import resolve_tasks
    from e5_mistral.evaluation.paired import paired_difference

    folder = out / "eval" / key
    entry = scores.get(key) or timed_score(path, student, folder, benchmarks)
    (task,) = resolve_tasks([TASK], benchmarks)
    baseline = zero_shot_predictions(benchmarks, out)
    difference = paired_difference(task, folder / "predictions", baseline)
    if difference is None:
        raise RuntimeError(f"no paired difference for {key}: predictions missing in {folder} or {baseline}")
    scores[key] = {**entry, "minus_zero_shot": difference.to_dict()}
    save(scores)


def to_score(key: str, out: Path, scores: dict) -> bool:
    """Whether ``key`` still needs scoring: not scored, or scored without its difference and predictions here."""
    entry = scores.get(key)
    return entry is None or entry.get("minus_zero_shot") is None and (out / "eval" / key / "predictions").is_dir()


def save(scores: dict) -> None:
    SCORES.write_text(json.dumps(scores, indent=2, sort_keys=True) + "\n")


def timed_score(path: Path, student, folder: Path, benchmarks: Path) -> dict:
    started = time.monotonic()
    value = evaluate(path, student, folder, benchmarks)
    return {"ndcg_at_10": value, "eval_seconds": round(time.monotonic() - started)}


def evaluate(path: Path, student, folder: Path, benchmarks: Path) -> float:
    """nDCG@10 of the model at ``path`` on SciFact, with its per-query predictions written under ``folder``."""
    from e5_mistral.evaluation.evaluate import evaluate
    from e5_mistral.precision import cpu_dtype

    kwargs = {"instructions": student.instructions, "dtype": cpu_dtype(student.eval_dtype), "batch_size": 16}
    return evaluate(str(path), [TASK], folder, benchmarks_dir=benchmarks, show_progress_bar=False, **kwargs)[TASK]


def zero_shot_predictions(benchmarks: Path, out: Path) -> Path:
    """The zero-shot MiniLM's per-query predictions, which every paired difference reads: scored again where
    ``out`` lacks them (scores.json keeps its nDCG@10, not its predictions)."""
    from e5_mistral.adaptation.quickstart import STUDENTS
    from e5_mistral.local_models import minilm_path

    folder = out / "eval" / ZERO_SHOT
    if not (folder / "predictions").is_dir():
        evaluate(minilm_path(), STUDENTS["minilm"], folder, benchmarks)
    return folder / "predictions"


def run(cells: list[Cell], benchmarks: Path, out: Path, scores: dict, seeds=SEEDS) -> None:
    from e5_mistral.adaptation.quickstart import STUDENTS
    from e5_mistral.local_models import minilm_path

    if ZERO_SHOT not in scores:
        scores[ZERO_SHOT] = timed_score(minilm_path(), STUDENTS["minilm"], out / "eval" / ZERO_SHOT, benchmarks)
        save(scores)
    for cell in cells:
        for seed in seeds:
            if to_score(key := f"{cell.name}/{seed}", out, scores):
                score(model(cell, seed, out), key, STUDENTS[cell.student], benchmarks, out, scores)


def table(scores: dict) -> str:
    zero = scores[ZERO_SHOT]["ndcg_at_10"]
    lines = [
        "| cell | what changes | nDCG@10 (seeds 42, 7) | mean | mean - zero-shot | each seed - zero-shot (95 % CI) |",
        "|---|---|---:|---:|---:|---|",
        f"| {ZERO_SHOT} | all-MiniLM-L6-v2 as it ships | {100 * zero:.2f} | {100 * zero:.2f} | | |",
    ]
    for cell in CELLS:
        runs = [scores.get(f"{cell.name}/{seed}") for seed in SEEDS]  # a screen has one seed scored
        if not any(runs):
            continue
        values = [r["ndcg_at_10"] for r in runs if r]
        mean = sum(values) / len(values)
        intervals = ", ".join(_interval(r.get("minus_zero_shot")) if r else "—" for r in runs)
        seeds = ", ".join(f"{100 * r['ndcg_at_10']:.2f}" if r else "—" for r in runs)
        lines.append(
            f"| {cell.name} | {cell.question} | {seeds} | {100 * mean:.2f} | {100 * (mean - zero):+.2f} | {intervals} |"
        )
    return "\n".join(lines)


def _interval(d: dict | None) -> str:
    if not d:
        return "n/a"
    text = f"{100 * d['difference']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
    return f"**{text}**" if d["low"] > 0 or d["high"] < 0 else text


def write_page(scores: dict) -> None:
    text = PAGE.read_text(encoding="utf-8")
    start, end = (text.index(m) for m in MARKERS)
    figure = "\n\n![nDCG@10 against the number of generated queries](adapt.png)"
    PAGE.write_text(
        text[: start + len(MARKERS[0])] + "\n" + table(scores) + figure + "\n" + text[end:], encoding="utf-8"
    )
    plot(scores)


# the query-count curves, a panel a student: (which data, its cells at growing numbers of drawn passages)
SIZE_CURVES = {
    "MiniLM": (
        ("first run", ("q100", "q200", "q300")),
        ("current prompt", ("q300-current-prompt", "q600-current-prompt")),
        ("task named", ("q600-task",)),
    ),
    "SmolLM2": (
        ("first run", ("q100-smollm2", "q200-smollm2", "q300-smollm2")),
        ("current prompt", ("q300-smollm2-current-prompt", "q600-smollm2-current-prompt")),
        ("task named", ("q600-smollm2-task",)),
    ),
}


def plot(scores: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = {c.name: c for c in CELLS}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, (student, curves) in zip(axes, SIZE_CURVES.items()):
        for (data, names), style in zip(curves, ("-", "--", ":")):
            for seed, marker in zip(SEEDS, "os"):
                keys = [(cells[n].passages, f"{n}/{seed}") for n in names]
                points = [(size, 100 * scores[key]["ndcg_at_10"]) for size, key in keys if key in scores]
                if points:
                    ax.plot(*zip(*points), marker=marker, linestyle=style, label=f"{data}, seed {seed}")
        ax.set_title(f"adapted {student}", fontsize=9)
        ax.set_xlabel("passages drawn for queries (SciFact corpus)")
    axes[0].axhline(100 * scores[ZERO_SHOT]["ndcg_at_10"], color="grey", linestyle="--", label="MiniLM zero-shot")
    axes[0].set_ylabel("SciFact nDCG@10")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks-dir", type=Path)
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "outputs" / "adapt-study")
    parser.add_argument("--cells", nargs="*", help=f"cells to run (default: all): {', '.join(c.name for c in CELLS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="training seeds (a screen: one)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    scores = json.loads(SCORES.read_text()) if SCORES.is_file() else {}
    if not args.report_only:
        if args.benchmarks_dir is None:
            parser.error("--benchmarks-dir is required (or --report-only)")
        chosen = [c for c in CELLS if not args.cells or c.name in args.cells]
        run(chosen, args.benchmarks_dir.resolve(), args.output.resolve(), scores, args.seeds)
    write_page(scores)
    print(table(scores))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
