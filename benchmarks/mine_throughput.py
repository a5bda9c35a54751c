"""Throughput of `e5-mistral mine` with all-MiniLM-L6-v2 (the bundled teacher) on this machine's CPUs.

Mines the same rows twice through ``e5_mistral.mining.hard_negatives.mine_config`` (sentence-transformers'
``mine_hard_negatives``): first with an empty embedding cache (embedding + search), then with the cache the first
pass wrote (search only, with the same fixed costs), so the difference is the time spent embedding. Prints rows/s
and the share of time spent embedding vs searching.

Rows: the (query, relevant document) pairs of a BEIR folder, with its whole corpus as candidates (``--beir``,
e.g. ../shared/benchmarks/SciFact: 339 pairs, 5,183 documents), or by default the bundled hand-written sample's
training rows (every family), with their positives as candidates.

    python -m benchmarks.mine_throughput --beir ../shared/benchmarks/SciFact
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from e5_mistral.mining.hard_negatives import MiningArguments, mine_config
from e5_mistral.mining.inputs import training_pair


def beir_rows(folder: Path) -> tuple[list[dict], list[str]]:
    queries = {q["_id"]: q["text"] for q in map(json.loads, open(folder / "queries.jsonl", encoding="utf-8"))}
    corpus = {
        d["_id"]: (d.get("title", "") + " " + d["text"]).strip()
        for d in map(json.loads, open(folder / "corpus.jsonl", encoding="utf-8"))
    }
    pairs = []
    for line in list(open(folder / "qrels" / "test.tsv", encoding="utf-8"))[1:]:
        qid, did, score = line.rstrip("\n").split("\t")
        if float(score) > 0 and qid in queries and did in corpus:
            pairs.append(
                {
                    "query": queries[qid],
                    "positive": corpus[did],
                    "negatives": [],
                    "instruction": "Given a scientific claim, retrieve documents that support or refute the claim",
                    "family": None,
                }
            )
    return pairs, list(corpus.values())


def sample_rows() -> tuple[list[dict], None]:
    from e5_mistral.quickstart import SAMPLE_DIR

    pairs = []
    for path in sorted(SAMPLE_DIR.glob("*/train.jsonl")):
        for i, line in enumerate(open(path, encoding="utf-8")):
            pairs.append(training_pair(json.loads(line), f"{path}, row {i}", None))
    return pairs, None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--beir", type=Path, default=None, help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)"
    )
    parser.add_argument("--num-negatives", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    import torch
    from sentence_transformers import SentenceTransformer

    from e5_mistral.local_models import minilm_path

    pairs, corpus = beir_rows(args.beir) if args.beir else sample_rows()
    model = SentenceTransformer(str(minilm_path()), device="cpu")
    settings = MiningArguments(
        dataset="-",
        output="-",
        num_negatives=args.num_negatives,
        batch_size=args.batch_size,
        no_progress=True,
        use_faiss=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        start = time.perf_counter()
        rows, counts = mine_config(pairs, model, settings, cache, corpus)
        first = time.perf_counter() - start
        start = time.perf_counter()
        mine_config(pairs, model, settings, cache, corpus)
        cached = time.perf_counter() - start
    candidates = len(set((corpus or []) + [p["positive"] for p in pairs]))
    embedding = max(first - cached, 0.0)
    print(
        f"{len(pairs)} rows, {candidates} candidate documents, {counts['mined_negatives']} negatives mined; "
        f"all-MiniLM-L6-v2, batch {args.batch_size}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs"
    )
    print(f"{'':24} {'seconds':>8} {'share':>6}")
    print(f"{'mine (embed + search)':24} {first:8.2f} {1.0:6.2f}")
    print(f"{'  embedding':24} {embedding:8.2f} {embedding / first:6.2f}")
    print(f"{'  search and the rest':24} {cached:8.2f} {cached / first:6.2f}")
    print(
        f"rows/s: {len(pairs) / first:.1f} (texts embedded/s: {(len(pairs) + candidates) / max(embedding, 1e-9):.1f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
