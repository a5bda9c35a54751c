"""`e5-mistral mine`: margins and ranges honoured, output read back by load_dataset and training, resume, bad rows."""

from __future__ import annotations

import json

import pytest

from e5_mistral.errors import E5MistralError
from e5_mistral.instructions import format_query
from e5_mistral.mining import hard_negatives as mining
from e5_mistral.mining.hard_negatives import MiningArguments, mine
from e5_mistral.quickstart import SAMPLE_DIR
from tests.test_training_fixtures import tiny_config, write_yaml


RANGE_MAX, MARGIN = 12, 0.05


@pytest.fixture(scope="module")
def mined(tmp_path_factory, minilm_dir):
    out = tmp_path_factory.mktemp("mined") / "out"
    args = MiningArguments(
        dataset=str(SAMPLE_DIR),
        output=str(out),
        teacher=str(minilm_dir),
        configs=["short_long", "sts"],
        num_negatives=3,
        range_max=RANGE_MAX,
        relative_margin=MARGIN,
        no_progress=True,
    )
    return args, mine(args), out


@pytest.mark.slow
def test_mined_negatives_respect_the_margin_and_the_rank_range(mined, minilm_dir, tmp_path):
    from datasets import load_dataset
    from sentence_transformers import SentenceTransformer

    _, report, out = mined
    # a fresh datasets cache: datasets keys a local folder's cache by its path only
    rows = load_dataset(str(out), "short_long", split="train", cache_dir=str(tmp_path / "cache")).to_list()
    assert len(rows) == report["configs"]["short_long"]["rows"] > 0
    assert report["configs"]["short_long"]["mined_negatives"] > len(rows)  # most rows got several
    teacher = SentenceTransformer(str(minilm_dir), device="cpu")
    corpus = list(dict.fromkeys(r["positive"] for r in rows))  # the candidates: the config's own positives
    corpus_embeddings = teacher.encode(corpus, convert_to_tensor=True)
    for row in rows:
        assert row["negative_scores"][0] is None  # the LLM-written negative is kept, first
        mined_negatives = list(zip(row["negative"][1:], row["negative_scores"][1:]))
        assert len(mined_negatives) <= 3
        query = teacher.encode([format_query(row["instruction"], row["query"])], convert_to_tensor=True)
        scores = teacher.similarity(query, corpus_embeddings)[0]
        order = [corpus[i] for i in scores.argsort(descending=True).tolist() if corpus[i] != row["positive"]]
        for text, score in mined_negatives:
            assert score <= (1 - MARGIN) * row["positive_score"] + 1e-6  # NV-Retriever's 95% rule
            assert order.index(text) < RANGE_MAX  # among the closest RANGE_MAX candidates
            assert score == pytest.approx(float(scores[corpus.index(text)]), abs=1e-4)
    card = (out / "README.md").read_text()
    assert "relative margin 0.05" in card and str(minilm_dir) in card


@pytest.mark.slow
def test_the_mined_dataset_trains_with_k_negatives(mined, tiny_model_dir, tmp_path):
    from e5_mistral.training.data import build_mixture
    from e5_mistral.training.e5_config import E5DatasetConfig
    from e5_mistral.training.run import parse_args, train

    _, _, out = mined
    dataset, _ = build_mixture(
        [E5DatasetConfig(path=str(out), name="short_long", split="train")], num_hard_negatives=3
    )
    counts = {len(n) for n in dataset["negatives"]}
    assert max(counts) == 3 and min(counts) >= 1  # up to k; the row's own negative plus the mined ones
    assert dataset[0]["query"].startswith("Instruct: ")
    config = tiny_config(
        tiny_model_dir,
        out,
        tmp_path / "run",
        max_steps=2,
        num_hard_negatives=3,
        dataset_mixture=[{"path": str(out), "name": "short_long", "split": "train"}],
    )
    trainer = train(*parse_args([str(write_yaml(tmp_path / "train.yaml", config))]))
    assert [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.slow
def test_a_rerun_resumes_only_what_is_unfinished(mined, monkeypatch):
    args, report, out = mined
    monkeypatch.setattr(mining, "mine_config", lambda *a, **k: pytest.fail("a finished config was mined again"))
    again = mine(args)
    assert again["configs"]["short_long"] == report["configs"]["short_long"]


def test_a_bad_row_names_the_file_row_and_field(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"query": "q", "positive": "p"}) + "\n" + json.dumps({"query": "q2", "positive": ""}) + "\n"
    )
    args = MiningArguments(dataset=str(rows), output=str(tmp_path / "out"), no_progress=True)
    with pytest.raises(E5MistralError, match=r"rows.jsonl split train, row 1: field 'positive' is empty"):
        mine(args)
    with pytest.raises(E5MistralError, match="--range-max"):
        MiningArguments(dataset="x", output="y", range_min=5, range_max=5)
