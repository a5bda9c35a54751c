"""Evaluate sentence-transformers models with mteb, using the paper's instructions.

mteb does the work: its tasks, evaluators and metrics, its results format (written by ``mteb.ResultCache``
under ``OUTPUT/results/...``). This module only resolves task names (offline folders or mteb's registry),
gives each task its instruction through mteb's ``model_prompts`` and writes ``summary.json`` plus a table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Sequence

from ..errors import E5MistralError, MissingFileError
from ..options import LOAD_DTYPES
from .offline_tasks import CORPUS_SAMPLE_PER_QUERY, load_offline_task, pick_subsets
from .paired import PairedDifference, paired_difference
from .prompts import model_prompts_for


logger = logging.getLogger(__name__)

# What classification tasks are scored on: the embeddings before the model's final Normalize (the paper's
# evaluation, its default here) or the model's own output (mteb's).
CLASSIFICATION_EMBEDDINGS = ("unnormalized", "normalized")
SETTINGS_NAME = "evaluation.json"  # beside summary.json: the settings that decide its scores


def resolve_tasks(
    names: Sequence[str],
    benchmarks_dir: str | Path | None = None,
    max_rows: int | None = None,
    subsets: Sequence[str] | None = None,
    corpus_per_query: int = CORPUS_SAMPLE_PER_QUERY,
) -> list:
    """mteb task objects for ``names``: ``benchmarks_dir/NAME/`` when that folder exists, else mteb's registry.

    ``subsets`` restricts tasks that have several subsets (languages, language pairs) to those.
    """
    import mteb

    if not names:
        raise E5MistralError("no task given (--tasks T1 T2 ...)")
    if benchmarks_dir is not None and not Path(benchmarks_dir).is_dir():
        raise MissingFileError(f"--benchmarks-dir {benchmarks_dir} is not a folder")
    tasks = []
    for name in dict.fromkeys(names):  # keep order, drop repeats
        folder = Path(benchmarks_dir) / name if benchmarks_dir is not None else None
        if folder is not None and folder.is_dir():
            tasks.append(
                load_offline_task(
                    folder, name=name, max_rows=max_rows, subsets=subsets, corpus_per_query=corpus_per_query
                )
            )
            continue
        try:
            task = mteb.get_task(name)
        except KeyError:
            where = f"no folder {folder} and " if folder is not None else ""
            raise E5MistralError(f"unknown task {name!r}: {where}no mteb task of that name") from None
        keep = pick_subsets(task.metadata.hf_subsets, subsets, f"mteb's {name}")
        if keep is not None:
            task = mteb.get_task(name, hf_subsets=keep)
        if max_rows is not None:
            logger.warning("--max-rows applies to offline tasks only; %s runs in full", name)
        logger.info("%s: mteb task, data from the Hugging Face Hub", name)
        tasks.append(task)
    return tasks


def model_label(model: str) -> str:
    """How a model is named in the table and summary: a folder's name, or the Hub id."""
    path = Path(model)
    return path.resolve().name if path.exists() else model


def unique_labels(models: Sequence[str]) -> list[str]:
    labels: list[str] = []
    for model in models:
        label = model_label(model)
        base, n = label, 2
        while label in labels:
            label, n = f"{base}-{n}", n + 1
        labels.append(label)
    return labels


def load_model(
    model: str,
    dtype: str = "auto",
    max_seq_length: int | None = None,
    flag: str = "model",
    loader=None,
    rope_theta: float | None = None,
):
    """A SentenceTransformer (or ``loader``, e.g. CrossEncoder) from a folder or Hub id, with its RoPE base set to
    ``rope_theta`` when given; any failure is one E5MistralError naming ``flag`` and the model."""
    import torch
    from sentence_transformers import SentenceTransformer

    from ..rope import rope_config_kwargs

    if dtype not in LOAD_DTYPES:
        raise E5MistralError(f"--dtype must be one of {', '.join(LOAD_DTYPES)}, got {dtype!r}")
    model_kwargs = {} if dtype == "auto" else {"dtype": getattr(torch, dtype)}
    extra = {"config_kwargs": rope_config_kwargs(model, rope_theta)} if rope_theta is not None else {}
    try:
        st_model = (loader or SentenceTransformer)(model, model_kwargs=model_kwargs, **extra)
    except Exception as err:  # noqa: BLE001 - any load failure is the user's model/path: report it in one line
        message = " ".join(str(err).split())[:300]
        raise E5MistralError(f"could not load {flag} {model!r}: {type(err).__name__}: {message}") from err
    if max_seq_length is not None:
        st_model.max_seq_length = max_seq_length
    return st_model


@contextlib.contextmanager
def encoding_pool(st_model, devices: Sequence[str] | None):
    """The encode arguments that spread encoding over ``devices``, one process each: sentence-transformers'
    multi-process pool, started once for all of a model's tasks and stopped after them ({} for one process)."""
    if not devices:
        yield {}
        return
    pool = st_model.start_multi_process_pool(target_devices=list(devices))
    try:
        yield {"pool": pool}
    finally:
        st_model.stop_multi_process_pool(pool)


def _truncate(st_model, dim: int | None, name: str) -> None:
    """Score the first ``dim`` dimensions, normalised again when the model normalises (sentence-transformers
    truncates after its last module, so a final Normalize would otherwise leave shorter, non-unit vectors), as
    Matryoshka training scores them."""
    from sentence_transformers.models import Normalize

    if dim is None:
        return
    width = st_model.get_embedding_dimension()
    if dim > width:
        raise E5MistralError(f"--truncate-dim {dim} is larger than the embedding of {name} ({width} dimensions)")
    st_model.truncate_dim = dim
    last = list(st_model._modules)[-1] if len(st_model) else None
    if last is not None and type(st_model._modules[last]) is Normalize:
        st_model._modules[last] = truncated_normalize(dim)


def truncated_normalize(dim: int):
    """sentence-transformers' Normalize of the first ``dim`` dimensions (``without_normalize`` still drops it)."""
    from sentence_transformers.models import Normalize

    class TruncatedNormalize(Normalize):
        def forward(self, features):
            features[self.module_input_name] = features[self.module_input_name][..., :dim]
            return super().forward(features)

    return TruncatedNormalize()


def without_normalize(st_model):
    """The same modules minus a final Normalize: the paper classifies raw embeddings ("slightly better results")."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize

    modules = list(st_model)
    if not modules or not isinstance(modules[-1], Normalize):
        return st_model
    return SentenceTransformer(
        modules=modules[:-1], prompts=st_model.prompts, device=str(st_model.device), truncate_dim=st_model.truncate_dim
    )


def _wrap(st_model, name: str, prompts: dict[str, str]):
    from mteb import SentenceTransformerEncoderWrapper

    wrapper = SentenceTransformerEncoderWrapper(st_model)
    # Set after construction: mteb's constructor drops prompt keys that are not registry task names,
    # which would lose the prompts of offline tasks named after their folder.
    wrapper.model_prompts = prompts
    wrapper.mteb_model_meta = wrapper.mteb_model_meta.model_copy(
        update={"name": name if "/" in name else f"local/{name}"}
    )
    return wrapper


def markdown_table(
    summary: dict[str, dict[str, float]],
    task_names: Sequence[str],
    paired: dict[str, dict[str, PairedDifference]] | None = None,
) -> str:
    """One row per task, one column per model, scores x100 (mteb main_score); '-' where a run failed. ``paired``
    adds a column per model: its difference from the first model with the 95 % interval, bold where it excludes 0,
    and the task's item count."""
    models = list(summary)
    paired = paired or {}
    baseline = _short(models[0]) if models else ""
    headers = [*models, *(f"{_short(m)} - {baseline} (95 % CI)" for m in paired)]
    lines = ["| Task | " + " | ".join(headers) + " |", "|---|" + "---:|" * len(headers)]
    for task in task_names:
        differences = [paired[m].get(task) for m in paired]
        items = next((d.items for d in differences if d is not None), None)
        cells = [f"{summary[m][task] * 100:.2f}" if task in summary[m] else "-" for m in models]
        cells += [format_difference(d) for d in differences]
        lines.append(f"| {task}" + (f" ({items:,} items)" if items else "") + " | " + " | ".join(cells) + " |")
    if len(task_names) > 1:
        means = []
        for m in models:
            scores = [summary[m][t] for t in task_names if t in summary[m]]
            means.append(f"{100 * sum(scores) / len(scores):.2f}" if len(scores) == len(task_names) else "-")
        lines.append("| **Average** | " + " | ".join(means + [""] * len(paired)) + " |")
    return "\n".join(lines)


def _short(label: str) -> str:
    """A column's name without its parenthesised gloss: "after (trained on ...)" -> "after"."""
    return label.split(" (")[0]


def format_difference(difference: PairedDifference | None) -> str:
    """``+5.10 [+2.00, +8.30]`` (x100), bold where the interval excludes 0; ``n/a`` where there is none."""
    if difference is None:
        return "n/a"
    text = f"{100 * difference.difference:+.2f} [{100 * difference.low:+.2f}, {100 * difference.high:+.2f}]"
    return f"**{text}**" if difference.excludes_zero else text


def paired_differences(task_objects, prediction_folders: dict[str, Path]) -> dict[str, dict[str, PairedDifference]]:
    """{model: {task: difference from the first model}} for every model after the first, where the task has one."""
    (baseline, baseline_folder), *others = prediction_folders.items()
    paired: dict[str, dict[str, PairedDifference]] = {}
    for label, folder in others:
        paired[label] = {}
        for task in task_objects:
            difference = paired_difference(task, folder, baseline_folder)
            if difference is not None:
                paired[label][task.metadata.name] = difference
    return paired


def evaluate(
    models: str | Sequence[str],
    tasks: Sequence[str],
    output_dir: str | Path,
    benchmarks_dir: str | Path | None = None,
    instructions: str = "paper",
    batch_size: int = 32,
    max_rows: int | None = None,
    dtype: str = "auto",
    max_seq_length: int | None = None,
    show_progress_bar: bool = True,
    subsets: Sequence[str] | None = None,
    corpus_per_query: int = CORPUS_SAMPLE_PER_QUERY,
    classification_embeddings: str = "unnormalized",
    truncate_dim: int | None = None,
    devices: Sequence[str] | None = None,
    rope_theta: float | None = None,
) -> dict:
    """Evaluate one or more models on ``tasks`` with mteb and write ``output_dir/summary.json``.

    Returns ``{task: main_score}`` for one model, ``{model: {task: main_score}}`` for several (the same shape
    as ``summary.json``). Scores are mteb's ``main_score`` on its 0-1 scale. A task that fails is logged and left
    out, the others are kept; a RuntimeError at the end names the failures. ``classification_embeddings``
    "unnormalized" (default) gives classification tasks the embeddings before the model's final Normalize, as the
    paper's evaluation does; "normalized" gives them the model's own output, as mteb does. The settings that
    decide the scores go to ``output_dir/evaluation.json`` (the model card says which was used). ``truncate_dim``
    scores the first d dimensions of every embedding (a Matryoshka-trained model's smaller sizes). ``devices``
    encodes with one process per device (sentence-transformers' multi-process pool, e.g. ``["cuda:0", "cuda:1"]``).
    ``rope_theta`` loads the models with that RoPE base (the paper's context extension, §5.2).
    """
    import mteb

    models = [models] if isinstance(models, str) else list(models)
    _check_arguments(models, batch_size, instructions, classification_embeddings, truncate_dim)
    task_objects = resolve_tasks(tasks, benchmarks_dir, max_rows, subsets, corpus_per_query)
    task_names = [t.metadata.name for t in task_objects]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = {"instructions": instructions, "classification_embeddings": classification_embeddings}
    settings.update({"max_rows": max_rows, "dtype": dtype, "max_seq_length": max_seq_length})
    settings.update({"truncate_dim": truncate_dim, "rope_theta": rope_theta})
    (output_dir / SETTINGS_NAME).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    labels = unique_labels(models)
    several = len(models) > 1

    summary: dict[str, dict[str, float]] = {}
    prediction_folders = {label: (output_dir / label if several else output_dir) / "predictions" for label in labels}
    failures: list[str] = []
    for model, label in zip(models, labels):
        logger.info("evaluating %s on %s", model, ", ".join(task_names))
        st_model = load_model(model, dtype, max_seq_length, rope_theta=rope_theta)
        _truncate(st_model, truncate_dim, model)
        own_prompts = {k: v for k, v in (getattr(st_model, "prompts", None) or {}).items() if v}
        prompts = model_prompts_for(task_objects, instructions, own_prompts)
        unnormalized = classification_embeddings == "unnormalized"
        classification = [t for t in task_objects if t.metadata.type == "Classification" and unnormalized]
        others = [t for t in task_objects if t not in classification]
        run = {
            "cache": mteb.ResultCache(cache_path=output_dir / label if several else output_dir),
            "overwrite_strategy": "always",  # results of an earlier run here (maybe on --max-rows subsets) are stale
            "raise_error": False,
            "show_progress_bar": show_progress_bar,
            "prediction_folder": prediction_folders[label],
        }
        scores = {}
        for group, raw in ((others, False), (classification, True)):
            if group:
                encoder = without_normalize(st_model) if raw else st_model
                with encoding_pool(encoder, devices) as pool:
                    encode = {"batch_size": batch_size, "show_progress_bar": show_progress_bar, **pool}
                    result = mteb.evaluate(_wrap(encoder, label, prompts), group, encode_kwargs=encode, **run)
                scores.update(_scores(result, label, failures))
        summary[label] = {name: scores[name] for name in task_names if name in scores}
        # Written after every model, so a crash later loses nothing already scored.
        _write_summary(output_dir, summary, several)

    paired = paired_differences(task_objects, prediction_folders) if several else {}
    if paired:
        (output_dir / "paired.json").write_text(
            json.dumps({m: {t: d.to_dict() for t, d in tasks.items()} for m, tasks in paired.items()}, indent=2) + "\n"
        )
    table = markdown_table(summary, task_names, paired)
    (output_dir / "summary.md").write_text(table + "\n", encoding="utf-8")
    print(table, flush=True)
    if failures:
        raise E5MistralError(
            f"{len(failures)} evaluation(s) failed (the others are in {output_dir}): " + "; ".join(failures)
        )
    return summary if several else summary[labels[0]]


def _check_arguments(models, batch_size, instructions, classification_embeddings, truncate_dim) -> None:
    """Bad flags fail before any model is loaded."""
    if not models:
        raise E5MistralError("no model given")
    if batch_size < 1:
        raise E5MistralError(f"--batch-size must be at least 1, got {batch_size}")
    model_prompts_for([], instructions)  # validates the mode
    if classification_embeddings not in CLASSIFICATION_EMBEDDINGS:
        raise E5MistralError(
            f"--classification-embeddings must be one of {', '.join(CLASSIFICATION_EMBEDDINGS)}, "
            f"not {classification_embeddings!r}"
        )
    if truncate_dim is not None and truncate_dim < 1:
        raise E5MistralError(f"--truncate-dim must be at least 1, got {truncate_dim}")


def _scores(result, label: str, failures: list[str]) -> dict[str, float]:
    """{task: main score} of one mteb run; a task without a score, or that raised, goes to ``failures``."""
    scores = {}
    for task_result in result.task_results:
        score = float(task_result.get_score())
        if math.isnan(score):
            failures.append(f"{label}/{task_result.task_name}: no score")
        else:
            scores[task_result.task_name] = score
    for error in result.exceptions or []:
        failures.append(f"{label}/{error.task_name}: {error.exception}")
        logger.error("%s failed on %s: %s", label, error.task_name, error.exception)
    return scores


def _write_summary(output_dir: Path, summary: dict[str, dict[str, float]], several: bool) -> None:
    payload = summary if several else next(iter(summary.values()))
    tmp = output_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    tmp.replace(output_dir / "summary.json")
