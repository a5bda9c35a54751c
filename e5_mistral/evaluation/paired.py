"""Paired bootstrap confidence intervals of one model's score minus another's, over a task's items.

Two models scored on the same items differ partly by chance: which pairs, queries or texts the test set happens
to hold. Resampling the items (with replacement) and scoring both models on each resample gives the spread of
their difference; a difference whose 95 % interval excludes 0 is one the test set supports. The per-item
predictions are mteb's own (``mteb.evaluate(..., prediction_folder=...)``), so nothing is encoded twice.

| task type | item | score on a resample |
| --- | --- | --- |
| STS | a pair | Spearman of cosine similarity with the gold score (mteb's ``cosine_spearman``) |
| Retrieval | a query | mean nDCG@10 |
| Classification | a test text | mean accuracy over mteb's experiments |

Other task types get no interval (their main scores do not split into items this way).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np


RESAMPLES = 1000
CONFIDENCE = 0.95
SEED = 0
NDCG_DEPTH = 10


@dataclass(frozen=True)
class PairedDifference:
    """``difference`` = score(model) - score(baseline) on the whole test set, with its bootstrap interval."""

    difference: float
    low: float
    high: float
    items: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return asdict(self)


def _rank_rows(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values, axis=-1)


def spearman_rows(predicted: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``predicted`` with the same row of ``gold`` (ties get average ranks)."""
    a, b = _rank_rows(predicted), _rank_rows(gold)
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=-1) / denominator


def ndcg_at_k(ranked: dict[str, float], relevant: dict[str, int], k: int = NDCG_DEPTH) -> float:
    """nDCG@k of one query's scored documents against its judgements (gain = relevance, as trec_eval)."""
    order = sorted(ranked.items(), key=lambda item: (-item[1], item[0]))[:k]
    dcg = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, (doc, _) in enumerate(order))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


# A scorer maps a (resamples, items) index array to one score per resample; each maker gives it with its item count.
Scorer = Callable[[np.ndarray], np.ndarray]


def _sts_scorer(data, predictions) -> tuple[Scorer, int]:
    gold = np.asarray(data["score"], dtype=float)
    predicted = np.asarray(predictions["cosine_scores"], dtype=float)
    return (lambda index: spearman_rows(predicted[index], gold[index])), len(gold)


def _retrieval_scorer(data, predictions) -> tuple[Scorer, int]:
    relevant = data["relevant_docs"]
    per_query = np.asarray([ndcg_at_k(predictions.get(q, {}), docs) for q, docs in relevant.items()])
    return (lambda index: per_query[index].mean(axis=-1)), len(per_query)


def _classification_scorer(data, predictions, label_column: str = "label") -> tuple[Scorer, int]:
    labels = np.asarray(data[label_column])
    correct = np.mean([np.asarray(run) == labels for run in predictions], axis=0)
    return (lambda index: correct[index].mean(axis=-1)), len(correct)


SCORERS = {"STS": _sts_scorer, "Retrieval": _retrieval_scorer, "Classification": _classification_scorer}


def _scorer(task, prediction_folder: Path) -> tuple[Scorer, int] | None:
    """The task's per-resample scorer and item count from one model's predictions, or None where the task type
    has none or the task has several subsets (each subset's items differ)."""
    make = SCORERS.get(task.metadata.type)
    path = Path(prediction_folder) / f"{task.metadata.name}_predictions.json"
    if make is None or not path.is_file():
        return None
    saved = {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if k != "mteb_model_meta"}
    if len(saved) != 1:
        return None
    subset, by_split = next(iter(saved.items()))
    split, predictions = next(iter(by_split.items()))
    data = task.dataset[subset][split]
    if task.metadata.type == "Classification":
        return make(data, predictions, getattr(task, "label_column_name", "label"))
    return make(data, predictions)


def paired_difference(
    task, model_predictions: Path, baseline_predictions: Path, resamples: int = RESAMPLES, seed: int = SEED
) -> PairedDifference | None:
    """score(model) - score(baseline) on ``task`` with a paired percentile-bootstrap interval over its items."""
    model, baseline = _scorer(task, model_predictions), _scorer(task, baseline_predictions)
    if model is None or baseline is None:
        return None
    (score_model, items), (score_baseline, _) = model, baseline
    everything = np.arange(items)[None, :]
    difference = float(score_model(everything)[0] - score_baseline(everything)[0])
    index = np.random.default_rng(seed).integers(0, items, size=(resamples, items))
    spread = score_model(index) - score_baseline(index)
    spread = spread[~np.isnan(spread)]
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(spread, [tail, 100 - tail])
    return PairedDifference(difference, float(low), float(high), items)
