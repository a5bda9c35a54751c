"""Peak memory of `e5-mistral filter` as the dataset grows: it must hold the embeddings and one block of scores,
never the query x document score matrix.

Each size is a fresh `e5-mistral filter` process over N short_long rows (unique texts, each with a positive and a
hard negative, so 2N candidate documents) with a tiny teacher (a static embedding over all-MiniLM-L6-v2's
tokenizer, 64 dimensions: encoding is cheap, the scoring dominates); the kernel reports its peak resident memory
when it exits. The whole score matrix at 100k rows would be 100k x 200k floats, 80 GB.

    python -m benchmarks.filter_memory                                   # 10k, 30k and 100k rows
    python -m benchmarks.filter_memory --baseline-src /tmp/old          # the same with another checkout, side by side

``--baseline-src`` names the root of another checkout of this repository (e.g. ``git worktree add /tmp/old
COMMIT``); its package runs the same way, one after the other, never at the same time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]
DIMENSIONS = 64
WORDS = "river stone cloud paper lamp garden engine violin harbor window copper forest ticket winter signal".split()


def tiny_teacher(target: Path) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import StaticEmbedding
    from tokenizers import Tokenizer

    from e5_mistral.local_models import minilm_path

    tokenizer = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=DIMENSIONS)]).save(str(target))
    return target


def _text(i: int, kind: str) -> str:
    words = [WORDS[(i // 15**k + k) % 15] for k in range(4)]  # distinct for every i below 15**4
    return f"{kind} {i} about the {' '.join(words)}"


def dataset(rows: int, target: Path) -> Path:
    from e5_mistral.hub.writer import write_hub_folder

    meta = {"family": "short_long", "task": "Retrieve the note.", "language": "English", "generator_model": "bench"}
    meta.update(request_id="r", template_version="v", slots={})
    data = (
        {**meta, "user_query": _text(i, "query"), "positive_document": _text(i, "note"),
         "hard_negative_document": _text(i, "other note")}
        for i in range(rows)
    )  # fmt: skip
    return write_hub_folder(data, target)


def peak(dataset_folder: Path, teacher: Path, output: Path, src: Path | None) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one `e5-mistral filter` process."""
    argv = [sys.executable, "-m", "e5_mistral.cli", "filter", str(dataset_folder), "--output", str(output)]
    argv += ["--teacher", str(teacher), "--top-k", "3", "--batch-size", "256"]
    env = dict(os.environ, PYTHONPATH=str(src or REPO_ROOT), HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=src or REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if status:
        return seconds, float("nan")  # e.g. killed for memory: shown as nan
    return seconds, usage.ru_maxrss / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--baseline-src", type=Path, default=None, help="another checkout's root, run side by side")
    args = parser.parse_args(argv)
    codes = {"this checkout": None}
    if args.baseline_src is not None:
        codes = {"baseline": args.baseline_src.resolve(), **codes}
    results: dict[str, dict[int, tuple[float, float]]] = {name: {} for name in codes}
    with tempfile.TemporaryDirectory() as tmp:
        teacher = tiny_teacher(Path(tmp) / "teacher")
        for rows in args.sizes:
            folder = dataset(rows, Path(tmp) / f"data-{rows}")
            for name, src in codes.items():
                results[name][rows] = peak(folder, teacher, Path(tmp) / f"out-{name}-{rows}".replace(" ", "-"), src)
    print("code | rows | documents | seconds | peak RSS (MB)")
    print("--- | ---: | ---: | ---: | ---:")
    for name, runs in results.items():
        for rows, (seconds, mb) in runs.items():
            print(f"{name} | {rows} | {2 * rows} | {seconds:.1f} | {mb:.0f}")
    current = results["this checkout"]
    small, large = min(current), max(current)
    slope = (current[large][1] - current[small][1]) * 1024 / (large - small)
    print(f"this checkout: {slope:.2f} KB a row from {small} to {large} rows")
    if "baseline" in results:
        for rows in args.sizes:
            ratio = current[rows][1] / results["baseline"][rows][1]
            print(f"{rows} rows: peak RSS this/baseline {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
