"""What Matryoshka training keeps at a quarter of the dimensions: the method study's model with and without it.

SmolLM2-135M-Instruct (576 dimensions) is trained with the method study's reference recipe at learning rate 2e-3
(45 steps in fp32) on the study's reference data (97 generated examples, ``benchmarks/study_data``), once as it is
and once with ``matryoshka_dims: [576, 144]``, under the same seeds. Each model is scored on the study's tasks (STSBenchmark's
test set, 1,000 SICK-R pairs) at all 576 dimensions and at the first 144 (``e5-mistral evaluate --truncate-dim``);
"kept" is the score at 144 over the score at 576.

    python -m benchmarks.matryoshka --benchmarks-dir ../shared/benchmarks [--seeds 42 7]
    python -m benchmarks.matryoshka --benchmarks-dir ../shared/benchmarks --dims 144 36 \
        --cells lr-2e-3-100 mrl3-lr-2e-3-100                              # a sixteenth as well

Checkpoints and scores are cached under ``--output`` (default ``outputs/study``, shared with the method study, whose
``lr-2e-3-100`` runs are the models without Matryoshka); the scores also go to ``benchmarks/study_data/matryoshka.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.method_study import REPO_ROOT, SEEDS, STUDY_DATA, TASKS, Cell, export, train


FULL, QUARTER, SIXTEENTH = 576, 144, 36
CELLS = (
    Cell("lr-2e-3-100", "without Matryoshka", recipe={"learning_rate": 2.0e-3}),
    Cell(
        "mrl-lr-2e-3-100",
        "Matryoshka [576, 144]",
        recipe={"learning_rate": 2.0e-3, "matryoshka_dims": [FULL, QUARTER]},
    ),
    Cell(
        "mrl3-lr-2e-3-100",
        "Matryoshka [576, 144, 36]",
        recipe={"learning_rate": 2.0e-3, "matryoshka_dims": [FULL, QUARTER, SIXTEENTH]},
    ),
)
SCORES = STUDY_DATA / "matryoshka.json"


def score(model: Path, key: str, dim: int, benchmarks: Path, out: Path, scores: dict) -> dict:
    from e5_mistral.evaluation.evaluate import evaluate

    key = f"{key}/dim{dim}"
    if key not in scores:
        scores[key] = {}
        for task, rows in TASKS:
            folder = out / "eval-matryoshka" / key / task
            truncate = None if dim == FULL else dim
            found = evaluate(
                str(model), [task], folder, benchmarks, max_rows=rows, truncate_dim=truncate, show_progress_bar=False
            )
            scores[key].update(found)
        SCORES.write_text(json.dumps(scores, indent=2, sort_keys=True) + "\n")
    return scores[key]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks-dir", type=Path, required=True, help="MTEB-format tasks (../shared/benchmarks)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "outputs" / "study")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--dims", type=int, nargs="+", default=[QUARTER], help="smaller sizes to score at")
    parser.add_argument(
        "--cells", nargs="+", default=[c.name for c in CELLS[:2]], help="of: " + " ".join(c.name for c in CELLS)
    )
    args = parser.parse_args(argv)
    scores = json.loads(SCORES.read_text()) if SCORES.is_file() else {}
    tasks = [task for task, _ in TASKS]
    print(f"| model | seed | dimensions | {' | '.join(tasks)} | kept (mean over tasks) |")
    print("| --- | ---: | ---: |" + " ---: |" * (len(tasks) + 1))
    for cell in (c for c in CELLS if c.name in args.cells):
        for seed in args.seeds:
            checkpoint = train(cell, seed, args.output)
            model = export(checkpoint, checkpoint.parent / "export")
            full = score(model, f"{cell.name}/seed{seed}", FULL, args.benchmarks_dir, args.output, scores)
            print(f"| {cell.question} | {seed} | {FULL} | " + " | ".join(f"{full[t]:.4f}" for t in tasks) + " | |")
            for dim in args.dims:
                found = score(model, f"{cell.name}/seed{seed}", dim, args.benchmarks_dir, args.output, scores)
                kept = sum(found[t] / full[t] for t in tasks) / len(tasks)
                values = " | ".join(f"{found[t]:.4f}" for t in tasks)
                print(f"| {cell.question} | {seed} | {dim} | {values} | {kept:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
