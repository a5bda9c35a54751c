"""Memory and replay of `e5-mistral generate` as a run grows: peak RSS at two sizes, its slope, and a no-op rerun.

Each size is a fresh `e5-mistral generate` process (examples from a fake endpoint with no latency, in a child
process of its own) whose peak resident memory the kernel reports when it exits, in two shapes: the narrowest run
(short_long in English) and generate's defaults (six families, the paper's 93 languages). The slope between the two
sizes is what every further example costs (the target: at most 2 KB, so 1 GB at the paper's 500k); the rerun of
the larger run over its full journal sends nothing and must take at most 3 s.

    python -m benchmarks.generation_memory                              # 2,000 and 12,000 examples, both shapes
    python -m benchmarks.generation_memory --baseline-src /tmp/old     # the same with another checkout, side by side

``--baseline-src`` names the root of another checkout of this repository (e.g. ``git worktree add /tmp/old
COMMIT``); its package is run the same way, one after the other, never at the same time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.generation_throughput import FAMILY, REPO_ROOT, ServerProcess


SLOPE_TARGET_KB = 2.0
RERUN_TARGET_S = 3.0


SHAPES = {  # the run's shape: the options besides the size
    "narrow": ["--families", FAMILY, "--languages", "English"],
    "defaults": [],
}


def generate(base_url: str, output: Path, count: int, src: Path | None, shape: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one `e5-mistral generate` process."""
    argv = [sys.executable, "-m", "e5_mistral.cli", "generate", "--model", "fake", "--base-url", base_url]
    argv += ["--output", str(output), "--num-examples", str(count), *SHAPES[shape]]
    argv += ["--concurrency", "64", "--no-progress"]
    env = dict(os.environ, OPENAI_API_KEY="EMPTY", PYTHONPATH=str(src or REPO_ROOT))
    started = time.perf_counter()
    # run from the checkout's root: `python -m` puts the working directory first on the path
    process = subprocess.Popen(argv, env=env, cwd=src or REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)  # this child's own peak, not the largest child's so far
    seconds = time.perf_counter() - started
    if status:
        raise SystemExit(f"generate failed ({count} examples):\n{process.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def measure(base_url: str, sizes: tuple[int, int], src: Path | None, folder: Path, shape: str) -> dict:
    runs = {count: generate(base_url, folder / str(count), count, src, shape) for count in sizes}
    rerun = generate(base_url, folder / str(sizes[1]), sizes[1], src, shape)
    small_mb, large_mb = runs[sizes[0]][1], runs[sizes[1]][1]
    slope_kb = (large_mb - small_mb) * 1024 / (sizes[1] - sizes[0])
    return {"runs": runs, "slope_kb": slope_kb, "rerun": rerun}


def report(name: str, sizes: tuple[int, int], result: dict) -> list[str]:
    lines = [f"{name} | {count} | {s:.1f} | {mb:.0f}" for count, (s, mb) in result["runs"].items()]
    rerun_s, rerun_mb = result["rerun"]
    lines.append(f"{name} | rerun of {sizes[1]} (nothing to send) | {rerun_s:.2f} | {rerun_mb:.0f}")
    lines.append(f"{name} | slope | | {result['slope_kb']:.2f} KB/example")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=(2000, 12000), metavar=("SMALL", "LARGE"))
    parser.add_argument("--baseline-src", type=Path, default=None, help="another checkout's root, run side by side")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    args = parser.parse_args(argv)
    sizes = tuple(args.sizes)
    results = {}
    with ServerProcess(latency=0.0) as server, tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            if args.baseline_src is not None:
                src, folder = args.baseline_src.resolve(), Path(tmp) / f"baseline-{shape}"
                results[f"baseline, {shape}"] = measure(server.base_url, sizes, src, folder, shape)
            results[f"this checkout, {shape}"] = measure(server.base_url, sizes, None, Path(tmp) / shape, shape)
    print("code, shape | examples | seconds | peak RSS (MB)")
    print("--- | ---: | ---: | ---:")
    for name, result in results.items():
        print("\n".join(report(name, sizes, result)))
    for shape in args.shapes:
        current = results[f"this checkout, {shape}"]
        if f"baseline, {shape}" in results:
            base = results[f"baseline, {shape}"]
            print(
                f"{shape}: ratios this/baseline: slope {current['slope_kb'] / base['slope_kb']:.2f}, "
                f"rerun {current['rerun'][0] / base['rerun'][0]:.2f}"
            )
        print(
            f"{shape}: targets: slope <= {SLOPE_TARGET_KB} KB/example ({current['slope_kb']:.2f}), "
            f"rerun <= {RERUN_TARGET_S} s ({current['rerun'][0]:.2f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
