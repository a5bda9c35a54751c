"""The run's files and the dataset in the Hub layout (identical on disk and on the Hub).

``OUTPUT/dataset/`` holds ``README.md`` (a dataset card whose YAML ``configs:`` maps the six families and
``all`` to their files) and one sub-folder per config with a parquet file, so that
``load_dataset(OUTPUT/dataset, "short_long", split="train")`` reads it back. ``push_to_hub`` uploads that
same folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Sequence

from ..errors import E5MistralError, MissingFileError
from ..local_data import write_parquet
from .diversity import diversity_report
from .schema import ALL_CONFIG, CONFIG_NAMES, columns, conform, features, output_keys
from .templates import TEMPLATE_DIR


logger = logging.getLogger(__name__)

DATA_FILE = "train-00000-of-00001.parquet"


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # readers never see half a file


def write_outputs(output: Path, report: dict, rows: list[dict], rejects: list[dict], args) -> Path:
    """report.json, rejected.jsonl, diversity.json and dataset/ under ``output``."""
    output = Path(output)
    diversity = diversity_report(rows)
    _write_json(output / "diversity.json", diversity)
    _write_json(output / "report.json", report)
    tmp = output / "rejected.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        for reject in rejects:
            handle.write(json.dumps(reject, ensure_ascii=False) + "\n")
    os.replace(tmp, output / "rejected.jsonl")
    settings = {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "system_prompt": args.system_prompt,
        "accept_text_task_lists": args.accept_text_task_lists,
        "generator_license": args.generator_license,
    }
    return write_hub_folder(rows, output / "dataset", report, settings, diversity, repo_id=args.push_to_hub)


def write_hub_folder(
    rows: Sequence[dict],
    folder: str | os.PathLike,
    report: dict | None = None,
    settings: dict | None = None,
    diversity: dict | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write the Hub layout for ``rows`` (accepted rows of the schema) to ``folder``, replacing it."""
    import datasets

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {}
    for config in CONFIG_NAMES:
        subset = [conform(r, config) for r in rows if config == ALL_CONFIG or r["family"] == config]
        counts[config] = len(subset)
        (tmp / config).mkdir(parents=True)
        table = datasets.Dataset.from_dict(
            {c: [r[c] for r in subset] for c in columns(config)}, features=features(config)
        ).data.table
        write_parquet(table, tmp / config / DATA_FILE)
    card = dataset_card(rows, counts, report or {}, settings or {}, diversity, repo_id or str(folder))
    card.save(tmp / "README.md")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def _table(counter: Counter, limit: int = 100) -> str:
    if not counter:
        return "(none)"
    lines = ["| value | rows |", "|---|---|"] + [f"| {k} | {v} |" for k, v in counter.most_common(limit)]
    return "\n".join(lines)


def dataset_card(rows, counts: dict, report: dict, settings: dict, diversity, repo_id: str):
    from huggingface_hub import DatasetCard, DatasetCardData

    codes = _language_codes()
    card_data = DatasetCardData(
        configs=[
            {"config_name": c, "data_files": [{"split": "train", "path": f"{c}/*.parquet"}]} for c in CONFIG_NAMES
        ],
        language=sorted({codes[r["language"]] for r in rows if r["language"] in codes}) or None,
        license="other",
        task_categories=["sentence-similarity", "text-retrieval", "text-classification"],
        tags=["synthetic", "embeddings", "e5-mistral"],
        pretty_name="Synthetic embedding training data (E5-mistral recipe)",
    )
    slot_counter = Counter(f"{k} = {v}" for r in rows for k, v in (r.get("slots") or {}).items())
    config_rows = [
        {"name": c, "rows": counts[c], "columns": ", ".join(f"`{k}`" for k in output_keys(c))} for c in CONFIG_NAMES
    ]
    report = {
        "brainstorm": {},
        "per_family": {},
        "response_format": {"chosen": "none", "refused": {}},
        "acceptance": {"per_family": {}, "per_language": {}, "per_reason": {}},
        **report,
    }
    return DatasetCard.from_template(
        card_data,
        template_path=str(TEMPLATE_DIR / "dataset_card.md"),
        total_rows=len(rows),
        config_rows=config_rows,
        repo_id=repo_id,
        generator_models=", ".join(sorted({r["generator_model"] for r in rows})) or "(none)",
        report=report,
        rejected_total=sum((report.get("rejected") or {}).values()),
        reject_reasons=", ".join(f"`{k}` {v}" for k, v in (report.get("rejected") or {}).items()) or "(none)",
        language_table=_table(Counter(r["language"] for r in rows)),
        slot_table=_table(slot_counter, limit=200),
        diversity=json.dumps(diversity, indent=2, ensure_ascii=False) if diversity is not None else "{}",
        **{k: settings.get(k, "") for k in ("temperature", "top_p", "max_tokens", "seed")},
        system_prompt=json.dumps(settings["system_prompt"], ensure_ascii=False)
        if settings.get("system_prompt")
        else None,
        accept_text_task_lists=bool(settings.get("accept_text_task_lists")),
        generator_license=settings.get("generator_license"),
    )


def _language_codes() -> dict[str, str]:
    data = json.loads((TEMPLATE_DIR / "languages.json").read_text(encoding="utf-8"))
    return {entry["name"]: entry["code"] for entry in data["languages"]}


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    allow_patterns: list[str] | None = None,
) -> str:
    """Upload the Hub-layout ``folder`` (only ``allow_patterns`` of it, when given) as the dataset repo ``repo_id``;
    returns the commit URL. A failure is one line; every local file stays."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "README.md").is_file():
        raise MissingFileError(f"{folder} is not a dataset folder written by e5-mistral (no README.md)")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="dataset",
            allow_patterns=allow_patterns,
            commit_message="Upload synthetic embedding data (e5-mistral)",
        )
    except Exception as err:  # noqa: BLE001 - network, auth or Hub refusal: the user's to fix, the data is local
        message = " ".join(str(err).split())[:300]
        raise E5MistralError(
            f"pushing {folder} to the Hub dataset {repo_id} failed ({type(err).__name__}: {message}); "
            "everything is kept locally, rerun with --push-to-hub to try again"
        ) from err
    return str(getattr(info, "commit_url", info))
