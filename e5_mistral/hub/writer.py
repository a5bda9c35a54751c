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
from typing import Iterable

from ..errors import E5MistralError, MissingFileError
from .diversity import DiversityTally
from .schema import ALL_CONFIG, CONFIG_NAMES, HUB_DIR, check_row, conform, features, language_codes, output_keys


logger = logging.getLogger(__name__)

DATA_FILE = "train-00000-of-00001.parquet"


ROWS_PER_BATCH = 1000  # rows held per config before they go to its parquet file


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # readers never see half a file


# The generation settings a dataset card states; every command that writes a dataset carries them forward.
CARD_SETTINGS = (
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "system_prompt",
    "accept_text_task_lists",
    "generator_license",
)


def run_settings(args) -> dict:
    """The generation settings the dataset card states."""
    return {name: getattr(args, name) for name in CARD_SETTINGS}


class HubFolderWriter:
    """Writes the Hub layout row by row: each config's parquet file is written in batches of ``ROWS_PER_BATCH``,
    and what the card says of the rows (languages, slots, generators, diversity) is counted as they pass, so no
    list of rows is ever held. ``close`` writes the card and swaps the folder in; until then readers see the old
    folder, and ``abort`` leaves it as it was."""

    def __init__(self, folder: str | os.PathLike, extra_columns: tuple[str, ...] = ()):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.folder = Path(folder)
        self.tmp = self.folder.with_name(self.folder.name + ".tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.extra_columns = tuple(extra_columns)  # string columns a stage adds after the schema's (null if unset)
        extra = [pa.field(name, pa.string()) for name in self.extra_columns]
        self.schemas = {config: _with_fields(features(config).arrow_schema, extra) for config in CONFIG_NAMES}
        self.files, self.pending = {}, {}
        for config, schema in self.schemas.items():
            (self.tmp / config).mkdir(parents=True)
            self.files[config] = pq.ParquetWriter(self.tmp / config / DATA_FILE, schema)
            self.pending[config] = []
        self.counts, self.languages, self.slots = Counter(), Counter(), Counter()
        self.generators: set[str] = set()
        self.diversity = DiversityTally()

    def add(self, row: dict) -> None:
        """One row of a family (see ``check_row``); metadata columns it lacks are written as null."""
        check_row(row, f"{self.folder}: row {self.counts[ALL_CONFIG] + 1}")
        self.diversity.add(row)
        if row.get("language"):  # an adapted row's language is its passage's, not recorded
            self.languages[row["language"]] += 1
        self.slots.update(f"{k} = {v}" for k, v in (row.get("slots") or {}).items())
        if row.get("generator_model") is not None:
            self.generators.add(row["generator_model"])
        for config in (row["family"], ALL_CONFIG):
            self.counts[config] += 1
            self.pending[config].append({**conform(row, config), **{k: row.get(k) for k in self.extra_columns}})
            if len(self.pending[config]) >= ROWS_PER_BATCH:
                self._flush(config)

    def _flush(self, config: str) -> None:
        import pyarrow as pa

        if self.pending[config]:
            self.files[config].write_table(pa.Table.from_pylist(self.pending[config], schema=self.schemas[config]))
            self.pending[config] = []

    def _close_files(self) -> None:
        for config, file in self.files.items():
            self._flush(config)
            file.close()  # a config without rows: a typed file with no row group, which datasets reads

    def close(self, report: dict | None = None, settings: dict | None = None, repo_id: str | None = None) -> Path:
        self._close_files()
        card = dataset_card(self, report or {}, settings or {}, repo_id or str(self.folder))
        card.save(self.tmp / "README.md")
        shutil.rmtree(self.folder, ignore_errors=True)
        os.replace(self.tmp, self.folder)
        return self.folder

    def abort(self) -> None:
        for file in self.files.values():
            file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _with_fields(schema, fields: list):
    for extra in fields:
        schema = schema.append(extra)
    return schema


def write_hub_folder(
    rows: Iterable[dict],
    folder: str | os.PathLike,
    report: dict | None = None,
    settings: dict | None = None,
    repo_id: str | None = None,
    extra_columns: tuple[str, ...] = (),
) -> Path:
    """Write the Hub layout for ``rows`` (rows of the families, plus ``extra_columns``) to ``folder``, replacing it."""
    writer = HubFolderWriter(folder, extra_columns)
    try:
        for row in rows:
            writer.add(row)
    except BaseException:
        writer.abort()
        raise
    return writer.close(report, settings, repo_id)


def _table(counter: Counter, limit: int = 100) -> str:
    if not counter:
        return "(none)"
    lines = ["| value | rows |", "|---|---|"] + [f"| {k} | {v} |" for k, v in counter.most_common(limit)]
    return "\n".join(lines)


def dataset_card(written: HubFolderWriter, report: dict, settings: dict, repo_id: str):
    """The card of what ``written`` holds."""
    from huggingface_hub import DatasetCard, DatasetCardData

    codes = language_codes()
    card_data = DatasetCardData(
        configs=[
            {"config_name": c, "data_files": [{"split": "train", "path": f"{c}/*.parquet"}]} for c in CONFIG_NAMES
        ],
        language=sorted({codes[name] for name in written.languages if name in codes}) or None,
        license="other",
        task_categories=["sentence-similarity", "text-retrieval", "text-classification"],
        tags=["synthetic", "embeddings", "e5-mistral"],
        pretty_name="Synthetic embedding training data (E5-mistral recipe)",
    )
    config_rows = [
        {"name": c, "rows": written.counts[c], "columns": ", ".join(f"`{k}`" for k in output_keys(c))}
        for c in CONFIG_NAMES
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
        template_path=str(HUB_DIR / "dataset_card.md"),
        total_rows=written.counts[ALL_CONFIG],
        config_rows=config_rows,
        repo_id=repo_id,
        generator_models=", ".join(sorted(written.generators)) or "(none)",
        report=report,
        rejected_total=sum((report.get("rejected") or {}).values()),
        reject_reasons=", ".join(f"`{k}` {v}" for k, v in (report.get("rejected") or {}).items()) or "(none)",
        language_table=_table(written.languages),
        slot_table=_table(written.slots, limit=200),
        diversity=json.dumps(written.diversity.report(), indent=2, ensure_ascii=False),
        **{k: settings.get(k, "") for k in ("temperature", "top_p", "max_tokens", "seed")},
        system_prompt=json.dumps(settings["system_prompt"], ensure_ascii=False)
        if settings.get("system_prompt")
        else None,
        accept_text_task_lists=bool(settings.get("accept_text_task_lists")),
        generator_license=settings.get("generator_license"),
    )


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
