"""Step 2 of corpus adaptation: the query's neighbours decide its positive and its hard negative (Gecko's relabelling,
with a teacher embedder's neighbours and the LLM judge).

The teacher ranks the whole corpus for each generated query (mining's neighbour search: ``mine_config`` with no
margins, so the candidates are simply the closest other passages). Then, with a judge:

* positive: the seed passage, unless the judge finds that it does not satisfy the query and finds a passage ranked
  above it that does: then the best-ranked such passage (the query is relabelled);
* hard negative (``llm``): the first passage from rank ``negative_rank`` on that the judge finds not relevant (a
  false negative is never taken); ``mined``: the passage at that rank, unjudged; ``none``.

Every verdict goes through the judge's journal, so a rerun pays for none twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..mining.hard_negatives import MiningArguments, mine_config
from ..mining.judge import POSITIVE_PROMPT, judge_pairs


NEGATIVE_CHOICES = ("llm", "mined", "none")
SEED, NOT_CONFIRMED, RELABELLED, UNJUDGED = "seed", "seed, judged not relevant", "relabelled", "seed, unjudged"


@dataclass(frozen=True)
class RelabelSettings:
    teacher_query_prompt: str = ""  # a fixed prefix for the teacher's queries ("" = bare)
    candidates: int = 20  # neighbours retrieved per query
    positives_to_judge: int = 3  # of the neighbours ranked above the seed, how many the judge may pick from
    negatives: str = "llm"
    negative_rank: int = 10  # 0-based among the neighbours
    negatives_to_judge: int = 2
    relabel: bool = True  # judge the positive (False: the seed stays, unjudged)
    batch_size: int = 32


def neighbours(rows: list[dict], passages: dict[str, str], model, settings: RelabelSettings, cache: Path) -> list:
    """Per row: (the seed's teacher score, [(passage id, score), ...] of the closest other passages, best first)."""
    by_text = {}
    for passage_id, text in passages.items():
        by_text.setdefault(text, passage_id)
    pairs = [
        {
            "query": r["query"],
            "positive": passages[r["passage_id"]],
            "negatives": [],
            "instruction": None,
            "family": None,
        }
        for r in rows
    ]
    args = MiningArguments(
        output=str(cache),
        num_negatives=min(settings.candidates, max(len(by_text) - 1, 1)),
        range_max=min(settings.candidates, max(len(by_text) - 1, 1)),
        relative_margin=None,
        query_prompt=settings.teacher_query_prompt,
        batch_size=settings.batch_size,
        no_progress=True,
    )
    mined, _ = mine_config(pairs, model, args, cache, list(passages.values()))
    return [
        (row["positive_score"], [(by_text[t], s) for t, s in zip(row["negative"], row["negative_scores"])])
        for row in mined
    ]


def relabel(
    rows: list[dict], passages: dict[str, str], model, settings: RelabelSettings, judge, folder: Path, cache: Path
) -> tuple[list[dict], dict]:
    """``rows`` (task, query, passage_id) with their positive and negative passage ids and the decision; the counts.
    ``model`` gives the teacher when its neighbours are needed; ``judge`` is a :class:`..mining.judge.JudgeArguments`
    (None, or no ``judge_model``: nothing is judged); the judge's journal is kept in ``folder``, the teacher's
    embeddings in ``cache``."""
    judging = judge is not None and judge.judge_model is not None
    needed = judging and settings.relabel or settings.negatives != "none"
    # nothing to choose: no neighbour search (encoding a corpus is the costly part on a CPU)
    found = neighbours(rows, passages, model(), settings, cache) if needed else [(None, [])] * len(rows)
    asks: dict[tuple[str, str, str], None] = {}  # (task, query, passage id) to judge, in order
    plans = []
    for row, (seed_score, ranked) in zip(rows, found):
        above = [pid for pid, score in ranked if seed_score is not None and score > seed_score]
        above = above[: settings.positives_to_judge]
        below = [pid for pid, _ in ranked[settings.negative_rank :]]
        positive_asks = [row["passage_id"], *above] if judging and settings.relabel else []
        negative_asks = below[: settings.negatives_to_judge] if judging and settings.negatives == "llm" else []
        for pid in positive_asks + negative_asks:
            asks.setdefault((row["task"], row["query"], pid), None)
        plans.append((positive_asks, below))
    verdict = {}
    counts = {"judge": None}
    if asks:
        keys = list(asks)
        pairs = [(task, query, passages[pid]) for task, query, pid in keys]
        verdicts, counts["judge"] = judge_pairs(POSITIVE_PROMPT, pairs, judge, folder, "e5-mistral adapt (judge)")
        verdict = dict(zip(keys, verdicts))
    out = []
    decisions = {SEED: 0, NOT_CONFIRMED: 0, RELABELLED: 0, UNJUDGED: 0}
    for row, (positive_asks, below) in zip(rows, plans):
        positive, decision = _positive(row, positive_asks, verdict)
        decisions[decision] += 1
        negative = _negative(row, positive, below, verdict, settings)
        out.append({**row, "positive_passage_id": positive, "negative_passage_id": negative, "relabel": decision})
    counts.update(decisions=decisions, with_negative=sum(r["negative_passage_id"] is not None for r in out))
    return out, counts


def _positive(row: dict, asked: list[str], verdict: dict) -> tuple[str, str]:
    if not asked:
        return row["passage_id"], UNJUDGED
    key = (row["task"], row["query"])
    if verdict.get((*key, row["passage_id"])) is not False:  # relevant, or no usable answer: the seed stays
        return row["passage_id"], SEED
    better = next((pid for pid in asked[1:] if verdict.get((*key, pid)) is True), None)
    return (better, RELABELLED) if better is not None else (row["passage_id"], NOT_CONFIRMED)


def _negative(row: dict, positive: str, below: list[str], verdict: dict, settings: RelabelSettings) -> str | None:
    candidates = [pid for pid in below if pid not in (positive, row["passage_id"])]
    if settings.negatives == "none" or not candidates:
        return None
    if settings.negatives == "mined":
        return candidates[0]
    key = (row["task"], row["query"])
    return next(
        (pid for pid in candidates[: settings.negatives_to_judge] if verdict.get((*key, pid)) is False),
        None,
    )
