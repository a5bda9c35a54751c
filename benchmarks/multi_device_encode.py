"""Encoding on several devices (`--devices` of `evaluate` and `mine`) against one process, side by side.

Both paths encode the same texts with the same model: one ``SentenceTransformer.encode`` call in this process, and
the same call through sentence-transformers' multi-process pool on ``--devices`` (what ``--devices`` does). The pool's
start (one process per device, each loading the model) is timed apart from the encoding; the embeddings of both
paths are compared.

    python -m benchmarks.multi_device_encode                          # all-MiniLM-L6-v2, 4,000 texts, cpu cpu
    python -m benchmarks.multi_device_encode --model EXPORT --devices cuda:0 cuda:1 --num-texts 200000
"""

from __future__ import annotations

import argparse
import time

from benchmarks.encode_throughput import make_texts


def main(argv=None) -> int:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from e5_mistral.local_models import minilm_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="sentence-transformers model (default: all-MiniLM-L6-v2)")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cpu"])
    parser.add_argument("--num-texts", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    model = SentenceTransformer(args.model or str(minilm_path()), device=args.devices[0])
    texts = make_texts(args.num_texts)
    model.encode(texts[:64], batch_size=args.batch_size)  # warm-up

    started = time.perf_counter()
    one = model.encode(texts, batch_size=args.batch_size)
    one_s = time.perf_counter() - started

    started = time.perf_counter()
    pool = model.start_multi_process_pool(target_devices=args.devices)
    start_s = time.perf_counter() - started
    try:
        started = time.perf_counter()
        several = model.encode(texts, batch_size=args.batch_size, pool=pool)
        several_s = time.perf_counter() - started
    finally:
        model.stop_multi_process_pool(pool)

    devices = " ".join(args.devices)
    print(
        f"| path | texts/s | seconds |\n| --- | ---: | ---: |\n| one process | {len(texts) / one_s:.0f} | {one_s:.1f} |"
    )
    print(f"| {devices} | {len(texts) / several_s:.0f} | {several_s:.1f} (+{start_s:.1f} s to start the pool) |")
    print(f"speed-up {one_s / several_s:.2f}x ({one_s / (several_s + start_s):.2f}x with the pool's start)")
    print(f"largest difference between the embeddings: {float(np.abs(one - several).max()):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
