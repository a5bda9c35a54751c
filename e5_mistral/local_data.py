"""Reading local datasets through ``datasets`` without its stale cache (training and mining both read this way)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import E5MistralError


def fresh_read_options(path: str | os.PathLike, data_files=None, refresh: bool = True) -> dict:
    """``load_dataset`` keyword arguments that read a local folder or file as it is now, not a cached copy.

    datasets keys the cache of a local folder by its name and config only, and a builder takes the features it finds
    in that cache: a folder rewritten by a new run, or another folder of the same name, would load the old rows or
    fail to cast its columns. So local data gets a cache of its own, keyed by its files' paths, sizes and times, and
    with ``refresh`` is re-read (cheap) with no verification of the split sizes a cache remembers. Processes that
    read after the one that refreshed pass ``refresh=False`` and find its copy. Hub datasets keep their cache.
    """
    local = [Path(p) for p in [path, *_file_list(data_files)] if os.path.exists(p)]
    if not local and data_files is None:
        return {}
    options = {"cache_dir": str(_local_cache_dir(local))} if local else {}
    if refresh:
        options.update(download_mode="force_redownload", verification_mode="no_checks")
    return options


def _file_list(data_files) -> list:
    """The files ``data_files`` names (a path, a glob pattern, a list of them, or a mapping of splits to them)."""
    import glob

    if data_files is None:
        return []
    if isinstance(data_files, dict):
        return [f for files in data_files.values() for f in _file_list(files)]
    if isinstance(data_files, (str, os.PathLike)):
        return sorted(glob.glob(str(data_files), recursive=True)) or [data_files]
    return [f for files in data_files for f in _file_list(files)]


def _local_cache_dir(paths: list[Path]) -> Path:
    """A datasets cache folder for exactly these files as they are now."""
    import hashlib

    from datasets import config

    digest = hashlib.sha256()
    for root in paths:
        files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
        for f in files:
            stat = f.stat()
            digest.update(f"{f.resolve()}\x1f{stat.st_size}\x1f{stat.st_mtime_ns}\n".encode())
    return Path(config.HF_DATASETS_CACHE) / "e5-mistral-local" / digest.hexdigest()[:16]


def write_parquet(table, path: str | os.PathLike) -> None:
    """Write a pyarrow table; an empty one gets no row group at all, since datasets' parquet reader fails on an
    empty row group. The schema metadata (the datasets features) is kept either way."""
    import pyarrow.parquet as pq

    if table.num_rows:
        pq.write_table(table, path)
    else:
        pq.ParquetWriter(path, table.schema).close()


def write_jsonl(path: str | os.PathLike, rows) -> None:
    """One JSON object a line, UTF-8 as is."""
    import json

    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSON Lines file; a bad line is an error naming the file and line."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise E5MistralError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise E5MistralError(f"{path}: line {number} is not a JSON object")
            rows.append(row)
    if not rows:
        raise E5MistralError(f"{path} holds no rows")
    return rows
