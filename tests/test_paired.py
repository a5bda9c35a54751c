"""Paired bootstrap intervals: the per-item scores rebuild mteb's main scores, and the interval behaves."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.stats import spearmanr

from e5_mistral.evaluation import paired
from e5_mistral.evaluation.evaluate import evaluate, format_difference
from e5_mistral.evaluation.offline_tasks import load_offline_task


def test_spearman_rows_equals_scipy_with_ties():
    rng = np.random.default_rng(0)
    predicted, gold = rng.normal(size=(3, 50)), rng.integers(0, 5, size=(3, 50)).astype(float)
    expected = [spearmanr(p, g)[0] for p, g in zip(predicted, gold)]
    assert paired.spearman_rows(predicted, gold) == pytest.approx(expected, abs=1e-12)


def test_ndcg_at_10_by_hand():
    ranked = {"a": 0.9, "b": 0.8, "c": 0.7}
    # relevant b (rank 2) and z (never retrieved): DCG = 1/log2(3); ideal = 1 + 1/log2(3)
    expected = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    assert paired.ndcg_at_k(ranked, {"b": 1, "z": 1}) == pytest.approx(expected)
    assert paired.ndcg_at_k(ranked, {"a": 1}) == pytest.approx(1.0)
    assert paired.ndcg_at_k({}, {"a": 1}) == 0.0


class _Meta:
    def __init__(self, name, kind):
        self.name, self.type = name, kind


class _Task:
    def __init__(self, name, kind, data):
        self.metadata, self.dataset = _Meta(name, kind), {"default": {"test": data}}


def _predictions(folder, name, predictions):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}_predictions.json").write_text(json.dumps({"default": {"test": predictions}}))
    return folder


def test_a_clearly_better_model_gets_an_interval_above_zero(tmp_path):
    rng = np.random.default_rng(1)
    gold = rng.uniform(0, 5, size=400)
    good = gold + rng.normal(scale=0.5, size=400)
    poor = gold + rng.normal(scale=3.0, size=400)
    task = _Task("ToySTS", "STS", {"score": gold.tolist()})
    a = _predictions(tmp_path / "a", "ToySTS", {"cosine_scores": good.tolist()})
    b = _predictions(tmp_path / "b", "ToySTS", {"cosine_scores": poor.tolist()})
    difference = paired.paired_difference(task, a, b)
    assert difference.difference == pytest.approx(spearmanr(good, gold)[0] - spearmanr(poor, gold)[0])
    assert 0 < difference.low < difference.difference < difference.high
    assert difference.excludes_zero and difference.items == 400
    assert format_difference(difference).startswith("**+")
    same = paired.paired_difference(task, a, a)
    assert same.difference == same.low == same.high == 0 and not same.excludes_zero


def test_noise_alone_gives_an_interval_around_zero(tmp_path):
    relevant = {f"q{i}": {f"d{i}": 1} for i in range(60)}
    task = _Task("ToyRetrieval", "Retrieval", {"relevant_docs": relevant})

    def run(seed):
        noise = np.random.default_rng(seed)
        return {q: {f"d{i}": float(noise.uniform()), f"x{i}": float(noise.uniform())} for i, q in enumerate(relevant)}

    a = _predictions(tmp_path / "a", "ToyRetrieval", run(10))
    b = _predictions(tmp_path / "b", "ToyRetrieval", run(11))
    difference = paired.paired_difference(task, a, b)
    assert difference.low < 0 < difference.high and not difference.excludes_zero


def test_no_interval_for_task_types_without_items(tmp_path):
    task = _Task("ToyPairs", "PairClassification", {})
    a = _predictions(tmp_path / "a", "ToyPairs", {"anything": []})
    assert paired.paired_difference(task, a, a) is None
    assert format_difference(None) == "n/a"


@pytest.mark.slow
def test_evaluate_writes_intervals_whose_items_rebuild_mteb_scores(minilm_dir, tiny_tasks, tmp_path, capsys):
    copy = tmp_path / "minilm-copy"
    shutil.copytree(minilm_dir, copy)
    tasks = ["TinySTS", "TinyRetrieval", "TinyClassification", "TinyPairs"]
    out = tmp_path / "out"
    summary = evaluate([str(minilm_dir), str(copy)], tasks, out, tiny_tasks, show_progress_bar=False)
    first = minilm_dir.resolve().name
    intervals = json.loads((out / "paired.json").read_text())["minilm-copy"]
    assert set(intervals) == {"TinySTS", "TinyRetrieval", "TinyClassification"}  # no items for pair classification
    for task in intervals.values():  # the same model twice: no difference at all
        assert task["difference"] == task["low"] == task["high"] == 0
    for name in ("TinySTS", "TinyRetrieval", "TinyClassification"):
        task = load_offline_task(tiny_tasks / name, name=name)
        scorer, items = paired._scorer(task, out / first / "predictions")
        assert float(scorer(np.arange(items)[None, :])[0]) == pytest.approx(summary[first][name], abs=1e-6)
    table = capsys.readouterr().out
    assert f"| minilm-copy - {first} (95 % CI) |" in table and "+0.00 [+0.00, +0.00]" in table
