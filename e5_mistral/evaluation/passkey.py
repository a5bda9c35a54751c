"""Personalized passkey retrieval (paper §5.2, Figure 5), written as offline retrieval task folders.

Each candidate document is filler text ("The grass is green. The sky is blue. ...") of about LENGTH tokens with one
person's pass key hidden at a random place; a query asks "what is the pass key for NAME?", and exactly one document
answers it. The score is top-1 accuracy (mteb's ``recall_at_1`` with one relevant document), named as the task's main
score in ``task.json``.

    e5-mistral passkey --output tasks --lengths 256 512 1024 --candidates 100 --queries 50
    e5-mistral evaluate MODEL --benchmarks-dir tasks --tasks PasskeyRetrieval256 PasskeyRetrieval512 ...
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..errors import E5MistralError
from ..local_data import write_jsonl
from ..options import option


FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
FIRST_NAMES = (
    "Ada Ben Cleo Dov Eva Finn Gia Hugo Ida Jon Kai Lea Milo Nia Omar Pia Quin Rosa Sam Tea Uri Vera Wes Yara Zed"
)
LAST_NAMES = (
    "Abe Brook Cole Dane Ellis Frost Grant Hale Irwin Joyce Kent Lowe Marsh Nash Olsen Price Reid Stone Tate Vance"
)
MAIN_SCORE = "recall_at_1"  # top-1 accuracy: one relevant document per query


def task_name(length: int) -> str:
    return f"PasskeyRetrieval{length}"


def _document(name: str, passkey: int, length: int, rng: random.Random, count: Callable[[str], int]) -> str:
    """FILLER repeated to about ``length`` tokens, the needle at a random sentence boundary."""
    needle = f"{name}'s pass key is {passkey}. Remember it. {passkey} is the pass key of {name}."
    repeats = max(1, round((length - count(needle)) / count(FILLER + " ")))
    at = rng.randint(0, repeats)
    return " ".join([FILLER] * at + [needle] + [FILLER] * (repeats - at))


def write_passkey_task(
    folder: str | Path,
    length: int,
    candidates: int = 100,
    queries: int = 50,
    seed: int = 0,
    count: Callable[[str], int] | None = None,
) -> Path:
    """``folder/PasskeyRetrieval{length}/``: ``candidates`` documents of about ``length`` tokens (``count``: a text's
    tokens; default words x 4/3) and ``queries`` of them asked for."""
    names = [f"{first} {last}" for first in FIRST_NAMES.split() for last in LAST_NAMES.split()]
    if not 1 <= queries <= candidates <= len(names):
        raise E5MistralError(
            f"passkey: need 1 <= --queries <= --candidates <= {len(names)}, got {queries}, {candidates}"
        )
    count = count or (lambda text: round(len(text.split()) * 4 / 3))
    rng = random.Random(f"passkey:{seed}:{length}")
    people = rng.sample(names, candidates)
    passkeys = rng.sample(range(10000, 100000), candidates)
    task = Path(folder) / task_name(length)
    (task / "qrels").mkdir(parents=True, exist_ok=True)
    corpus = [
        {"_id": f"d{i}", "title": "", "text": _document(p, k, length, rng, count)}
        for i, (p, k) in enumerate(zip(people, passkeys))
    ]
    asked = rng.sample(range(candidates), queries)
    write_jsonl(task / "corpus.jsonl", corpus)
    write_jsonl(
        task / "queries.jsonl", [{"_id": f"q{i}", "text": f"what is the pass key for {people[i]}?"} for i in asked]
    )
    (task / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in asked), encoding="utf-8"
    )
    (task / "task.json").write_text(json.dumps({"main_score": MAIN_SCORE, "length_tokens": length}) + "\n")
    return task


@dataclass
class PasskeyArguments:
    output: str = option("Folder for the task folders (pass it to evaluate --benchmarks-dir).")
    lengths: list[int] = option(
        "Document lengths in tokens of --tokenizer, one task per length (PasskeyRetrievalL).",
        default_factory=lambda: [256, 512, 1024, 2048],
    )
    candidates: int = option("Candidate documents per task (the paper: 100).", 100)
    queries: int = option("Queries per task (the paper: 50).", 50)
    seed: int = option("Seed of names, pass keys and positions.", 0)
    tokenizer: Optional[str] = option(
        "Tokenizer that lengths are counted in (default: the bundled SmolLM2-135M-Instruct's).", None
    )


def main(argv: Sequence[str] | None = None, prog: str = "e5-mistral passkey") -> int:
    from ..cli import CommandParser, run

    parser = CommandParser([PasskeyArguments], prog=prog, description=__doc__.splitlines()[0])
    (args,) = parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)

    def _write() -> int:
        from transformers import AutoTokenizer

        from ..local_models import smollm2_path

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or str(smollm2_path()))
        count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        for length in args.lengths:
            folder = write_passkey_task(args.output, length, args.candidates, args.queries, args.seed, count)
            print(f"{folder}: {args.candidates} documents of about {length} tokens, {args.queries} queries")
        return 0

    return run(prog, _write)
