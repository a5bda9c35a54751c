"""Passkey retrieval accuracy against document length, with the model's own RoPE base and with others.

The paper (§5.2, Figure 5) extends E5-mistral's context by raising the RoPE base from 10^4 to 10^5, with no
long-context training. This script writes passkey tasks (`e5-mistral passkey`) at the lengths a CPU affords and
scores one model on them under each RoPE base (`e5-mistral evaluate --rope-theta`), top-1 accuracy.

    python -m benchmarks.passkey_rope                                  # the method study's model, if present
    python -m benchmarks.passkey_rope --model EXPORT --lengths 256 1024 4096 --thetas 1e4 1e5 1e6
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.method_study import REPO_ROOT


STUDY_MODEL = REPO_ROOT / "outputs" / "study" / "runs" / "lr-2e-3-100" / "seed42" / "export"


def main(argv=None) -> int:
    from transformers import AutoConfig, AutoTokenizer

    from e5_mistral.evaluation.evaluate import evaluate
    from e5_mistral.evaluation.passkey import task_name, write_passkey_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=STUDY_MODEL, help="a sentence-transformers export")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--thetas", type=float, nargs="+", default=[1e4, 1e6], help="besides the model's own")
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--queries", type=int, default=20)
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    own = AutoConfig.from_pretrained(args.model).rope_parameters["rope_theta"]

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    with tempfile.TemporaryDirectory() as tmp:
        tasks = Path(tmp) / "tasks"
        for length in args.lengths:
            write_passkey_task(tasks, length, args.candidates, args.queries, seed=0, count=count)
        names = [task_name(length) for length in args.lengths]
        rows = {}
        for theta in [None, *args.thetas]:
            rows[theta] = evaluate(
                str(args.model),
                names,
                Path(tmp) / f"out-{theta}",
                tasks,
                max_seq_length=max(args.lengths) + 16,  # the whole document (and EOS)
                rope_theta=theta,
                batch_size=4,
                show_progress_bar=False,
            )
    print(f"top-1 accuracy, {args.candidates} candidates, {args.queries} queries; model: {args.model}")
    print("| RoPE base | " + " | ".join(f"{length} tokens" for length in args.lengths) + " |")
    print("| --- |" + " ---: |" * len(args.lengths))
    for theta, scores in rows.items():
        label = f"{own:.0e} (the model's own)" if theta is None else f"{theta:.0e}"
        print(f"| {label} | " + " | ".join(f"{100 * scores[n]:.0f} %" for n in names) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
