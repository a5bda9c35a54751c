"""A BEIR retrieval folder from a pair-classification set, to run corpus adaptation on a corpus it has never seen.

Each distinct ``sentence1`` with at least one ``label`` 1 pair becomes a query; every distinct ``sentence2`` is a
document of the corpus; the label-1 pairs are the relevance labels (score 1). The label-0 partners stay in the
corpus, so each query's candidates include texts on its own topic that do not say the same thing (as in BEIR's
duplicate-question sets).

    python -m benchmarks.pair_retrieval ../shared/benchmarks/TwitterURLCorpus/test.jsonl outputs/twitter-url-retrieval
    e5-mistral quickstart-adapt outputs/twitter-url-retrieval

Ids are the first 12 hex digits of each text's sha256, so the folder is the same on every run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def text_id(prefix: str, text: str) -> str:
    return prefix + hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def read_pairs(path: Path) -> list[dict]:
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [k for k in ("sentence1", "sentence2", "label") if k not in row]
        if missing:
            raise SystemExit(f"{path}:{number}: no {', '.join(missing)} (a pair-classification row has all three)")
        pairs.append(row)
    return pairs


def beir_folder(pairs: list[dict], target: Path) -> dict:
    """Write corpus.jsonl, queries.jsonl and qrels/test.tsv under ``target``; returns their counts."""
    from e5_mistral.local_data import write_jsonl

    documents = {text_id("d", p["sentence2"]): p["sentence2"] for p in pairs}
    paraphrases = [p for p in pairs if int(p["label"]) == 1]
    relevant = {(text_id("q", p["sentence1"]), text_id("d", p["sentence2"])) for p in paraphrases}
    queries = {text_id("q", p["sentence1"]): p["sentence1"] for p in paraphrases}
    (target / "qrels").mkdir(parents=True, exist_ok=True)
    write_jsonl(target / "corpus.jsonl", ({"_id": i, "title": "", "text": t} for i, t in sorted(documents.items())))
    write_jsonl(target / "queries.jsonl", ({"_id": i, "text": t} for i, t in sorted(queries.items())))
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, d in sorted(relevant)]
    (target / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"documents": len(documents), "queries": len(queries), "relevant pairs": len(relevant)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", type=Path, help="a JSON Lines file of sentence1, sentence2, label")
    parser.add_argument("output", type=Path, help="the BEIR folder to write (refused when it holds files)")
    args = parser.parse_args(argv)
    if args.output.exists() and any(args.output.iterdir()):
        parser.error(f"{args.output} is not empty: name a new folder")
    counts = beir_folder(read_pairs(args.pairs), args.output)
    print(f"{args.output}: " + ", ".join(f"{n:,} {what}" for what, n in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
