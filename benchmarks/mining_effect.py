"""Does mining help at the quickstart's scale? The quickstart's CPU recipe trained on its generated data with and
without hard negatives mined by all-MiniLM-L6-v2, same steps, under two seeds, scored side by side.

Needs a finished quickstart folder (``e5-mistral quickstart``: ``synthetic/``, ``train.yaml``, ``heldout/``). Then:

1. ``e5-mistral mine OUT/synthetic --output OUT/mined`` with the bundled MiniLM (``--num-negatives 3``; rows keep
   their LLM-written negative first);
2. per seed: the recipe on the generated rows (``num_hard_negatives: 1``, the LLM-written negative: what the
   quickstart trains), and the same recipe on the mined rows (``num_hard_negatives: 1 + 3``), same steps;
3. ``e5-mistral evaluate`` of every model on the held-out retrieval and STS tasks of the quickstart.

Every model folder is kept, and one that exists is not trained again (delete it to redo it).

    python benchmarks/mining_effect.py --quickstart-dir outputs/quickstart --seeds 42 7
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def run(argv: list[str]) -> float:
    print("$ " + " ".join(argv), flush=True)
    start = time.monotonic()
    subprocess.run(argv, check=True)
    return time.monotonic() - start


def main(argv=None) -> int:
    import yaml

    from e5_mistral.local_models import minilm_path, smollm2_path
    from e5_mistral.quickstart import HELDOUT_RETRIEVAL, HELDOUT_STS, TRAIN_ON_CPU

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quickstart-dir", type=Path, default=REPO_ROOT / "outputs" / "quickstart")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7])
    parser.add_argument("--num-negatives", type=int, default=3, help="negatives mined per row")
    args = parser.parse_args(argv)

    qs = args.quickstart_dir
    out = qs / "mining-effect"
    out.mkdir(parents=True, exist_ok=True)
    e5 = [sys.executable, "-m", "e5_mistral.cli"]
    seconds = {}
    mined = out / "mined"
    if not (mined / "report.json").is_file():
        seconds["mine"] = run(
            [*e5, "mine", str(qs / "synthetic"), "--output", str(mined), "--teacher", str(minilm_path())]
            + ["--num-negatives", str(args.num_negatives), "--no-progress"]
        )
    recipe = yaml.safe_load((qs / "train.yaml").read_text())
    generated = recipe["dataset_mixture"][0]["path"]
    models = {}
    for seed in args.seeds:
        for variant, path, k in (("without", generated, 1), ("with mined", str(mined), 1 + args.num_negatives)):
            name = f"{variant.replace(' ', '-')}-{seed}"
            export = out / f"export-{name}"
            models[(variant, seed)] = export
            if (export / "modules.json").is_file():
                continue
            config = {
                **recipe,
                "dataset_mixture": [{**entry, "path": path} for entry in recipe["dataset_mixture"]],
                "num_hard_negatives": k,
                "seed": seed,
                "output_dir": str(out / f"model-{name}"),
            }
            (out / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            seconds[f"train {name}"] = run(
                [*TRAIN_ON_CPU, str(out / f"{name}.yaml"), "--model_name_or_path", str(smollm2_path())]
            )
            run([*e5, "export", str(out / f"model-{name}"), str(export), "--overwrite", "--max-seq-length", "64"])
    from e5_mistral.evaluation.evaluate import _unique_labels

    labels = dict(zip(models, _unique_labels([str(m) for m in models.values()])))  # as summary.json names them
    scores = {}
    for task, instructions in ((HELDOUT_RETRIEVAL, "none"), (HELDOUT_STS, "paper")):
        target = out / "eval" / task
        run(
            [*e5, "evaluate", *map(str, models.values()), "--tasks", task, "--benchmarks-dir", str(qs / "heldout")]
            + ["--output", str(target), "--batch-size", "16", "--instructions", instructions]
        )
        summary = json.loads((target / "summary.json").read_text())
        for key in models:
            scores.setdefault(task, {})[key] = summary[labels[key]][task]

    variants = ("without", "with mined")
    print(f"\nmined: {json.loads((mined / 'report.json').read_text())['configs'].get('all', {})}")
    header = " | ".join(f"{v} (seed {s})" for v in variants for s in args.seeds)
    print(f"\n| task | {header} | mean with - without | seed spread (without) |")
    print("| --- |" + " ---: |" * (len(variants) * len(args.seeds) + 2))
    for task, by_key in scores.items():
        cells = [f"{by_key[(v, s)]:.4f}" for v in variants for s in args.seeds]
        without = [by_key[("without", s)] for s in args.seeds]
        with_mined = [by_key[("with mined", s)] for s in args.seeds]
        delta = sum(with_mined) / len(with_mined) - sum(without) / len(without)
        print(f"| {task} | " + " | ".join(cells) + f" | {delta:+.4f} | {max(without) - min(without):.4f} |")
    print("\nseconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
