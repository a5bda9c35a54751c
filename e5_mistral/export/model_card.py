"""The exported model's card: ``model_card_template.md`` rendered with ``huggingface_hub.ModelCard``.

Filled from the run config (``e5_mistral_config.json``), the dataset cards of local training datasets and, when
given, the evaluation stage's ``summary.json`` (task name -> main score in 0-1).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import E5MistralError, MissingFileError
from ..resources import resource


logger = logging.getLogger(__name__)

TEMPLATE_NAME = "model_card_template.md"
SUMMARY_NAME = "summary.json"
CARD_TAGS = ["sentence-transformers", "feature-extraction", "e5-mistral", "mteb"]
# Hyperparameters shown in the card, in this order (keys of the run config's "training" block).


def template_path() -> Path:
    """The card template: the wheel's bundled copy, else the repository's ``model_card_template.md``."""
    return resource(TEMPLATE_NAME)


@dataclass
class EvalScore:
    task: str
    score: float
    type: str = "feature-extraction"
    metric: str = "main_score"
    dataset: str | None = None


def load_eval_settings(summary: Path) -> dict:
    """The settings ``e5-mistral evaluate`` wrote beside ``summary`` (``evaluation.json``); {} for other sources."""
    settings = summary.with_name("evaluation.json")
    try:
        return json.loads(settings.read_text(encoding="utf-8")) if settings.is_file() else {}
    except json.JSONDecodeError:
        return {}


def load_eval_results(path: str | Path) -> tuple[list[EvalScore], Path]:
    """Read ``summary.json`` (or a folder holding it): ``{task: main_score}`` with scores in 0-1."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / SUMMARY_NAME
    if not path.is_file():
        raise MissingFileError(f"evaluation results {path} not found (pass a summary.json or the folder holding it)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise E5MistralError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(raw, dict) or not raw:
        raise E5MistralError(f"{path} must be a non-empty JSON object mapping task name to main score")
    nested = [v for v in raw.values() if isinstance(v, dict) and "main_score" not in v]
    if nested and len(nested) == len(raw):
        # The evaluation stage's several-model shape {model: {task: score}}: only one model can go in a card.
        if len(raw) > 1:
            raise E5MistralError(
                f"{path} holds results of several models ({', '.join(raw)}); pass a single model's summary.json"
            )
        raw = nested[0]
    scores = []
    for task, value in raw.items():
        # Accept {"main_score": x, ...} objects as well as bare numbers.
        score = value.get("main_score") if isinstance(value, dict) else value
        if (
            isinstance(score, bool)
            or not isinstance(score, (int, float))
            or not math.isfinite(score)
            or not 0 <= score <= 1
        ):
            raise E5MistralError(f"{path}: task {task!r} has main score {score!r}; expected a number in 0-1")
        scores.append(EvalScore(task=str(task), score=float(score)))
    _add_task_metadata(scores)
    return scores, path


def _add_task_metadata(scores: list[EvalScore]) -> None:
    """Fill task type, metric and dataset id from mteb's task registry when mteb knows the task."""
    try:
        import mteb
    except ImportError:
        return
    for entry in scores:
        try:
            metadata = mteb.get_task(entry.task).metadata
        except (KeyError, ValueError):  # a task mteb does not know keeps the generic labels
            continue
        entry.type, entry.metric = metadata.type, metadata.main_score
        entry.dataset = metadata.dataset.get("path") if isinstance(metadata.dataset, dict) else None


def dataset_entries(datasets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run's datasets, enriched from their dataset cards when the path is a local folder with a README.md."""
    from huggingface_hub import DatasetCard

    entries = []
    for item in datasets:
        if not isinstance(item, dict) or not item.get("path"):
            raise E5MistralError(f"e5_mistral_config.json: every 'datasets' entry needs a 'path'; got {item!r}")
        entry = dict(item, local=False, pretty_name=None, card_summary=None, languages=None)
        readme = Path(str(item["path"])).expanduser() / "README.md"
        if readme.is_file():
            entry["local"] = True
            card = DatasetCard.load(readme)
            data = card.data.to_dict()
            entry["pretty_name"] = data.get("pretty_name")
            entry["languages"] = data.get("language")
            entry["card_summary"] = _first_paragraph(card.text)
        elif Path(str(item["path"])).expanduser().exists():
            entry["local"] = True
        entries.append(entry)
    return entries


def _first_paragraph(text: str, limit: int = 400) -> str | None:
    for block in text.split("\n\n"):
        block = " ".join(block.split())
        if block and not block.startswith(("#", "|", "```", "<", "-", "*")):
            return block if len(block) <= limit else block[: limit - 1].rstrip() + "…"
    return None


def render_model_card(
    *,
    model_name: str,
    repo_id: str,
    base_model: str,
    architecture: str,
    run_config,
    embedding_dim: int,
    max_seq_length: int,
    dtype: str,
    query_instruction: str,
    custom_prompt: str,
    task_prompt_names: list[str],
    special_tokens_template: str,
    adapter_included: bool,
    is_lora: bool = False,
    eval_results: list[EvalScore] | None = None,
    eval_source: str | None = None,
    eval_settings: dict | None = None,
    license: str | None = None,
    version: str = "",
    rope_theta: float | None = None,
    interpolate: float = 1.0,
) -> str:
    """Render the template into README.md text (YAML metadata + markdown)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from ..instructions import query_prompt

    datasets = dataset_entries(run_config.datasets)
    hub_base = base_model if not Path(base_model).expanduser().exists() else None
    languages = sorted({lang for d in datasets for lang in _as_list(d.get("languages"))}) or None
    card_data = ModelCardData(
        model_name=model_name,
        base_model=hub_base,
        library_name="sentence-transformers",
        pipeline_tag="sentence-similarity",
        tags=list(CARD_TAGS),
        datasets=[d["path"] for d in datasets if not d["local"]] or None,
        language=languages,
        license=license,
        eval_results=[
            EvalResult(
                task_type=r.type,
                dataset_type=r.dataset or r.task,
                dataset_name=r.task,
                metric_type=r.metric,
                metric_value=round(r.score, 6),
            )
            for r in eval_results or []
        ]
        or None,
    )
    hyperparameters = run_config.training.recorded()
    if run_config.temperature is not None:
        hyperparameters["temperature"] = run_config.temperature
    hyperparameters["max_seq_length"] = run_config.max_seq_length
    if run_config.query_max_length:
        hyperparameters["query_max_length"] = run_config.query_max_length
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path()),
        model_name=model_name,
        repo_id=repo_id,
        base_model=base_model,
        base_model_url=f"https://huggingface.co/{hub_base}" if hub_base else base_model,
        architecture=architecture,
        e5_mistral_version=version,
        embedding_dim=embedding_dim,
        normalize=run_config.normalize,
        pooling=run_config.pooling,
        is_lora=is_lora,
        lora=run_config.lora if is_lora else None,
        merged=run_config.merged,
        adapter_included=adapter_included,
        temperature=run_config.temperature,
        matryoshka_dims=run_config.matryoshka_dims,
        rope_theta=rope_theta,
        interpolate=interpolate,
        instructed=run_config.instructed_queries,
        max_seq_length=max_seq_length,
        dtype=dtype,
        special_tokens_template=special_tokens_template,
        default_instruction=query_instruction,
        query_prompt_literal=repr(query_prompt(query_instruction)),
        custom_prompt_literal=repr(custom_prompt),
        num_task_prompts=len(task_prompt_names),
        example_prompt_names=[f"`{name}`" for name in task_prompt_names[:4]],
        datasets=datasets,
        hyperparameters=hyperparameters,
        versions=run_config.versions or {},
        eval_results=eval_results or [],
        eval_source=eval_source,
        classification_embeddings=(eval_settings or {}).get("classification_embeddings"),
        has_classification=any(r.type == "Classification" for r in eval_results or []),
        eval_average=(sum(r.score for r in eval_results) / len(eval_results)) if eval_results else None,
        extra_limitations=[],
    )
    return str(card)


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]
