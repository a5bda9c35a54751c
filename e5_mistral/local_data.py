"""Reading local datasets through ``datasets`` without its stale cache (training and mining both read this way)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import E5MistralError


def fresh_read_options(path: str | os.PathLike, data_files=None) -> dict:
    """``load_dataset`` keyword arguments that re-read a local folder or file instead of its cached copy.

    datasets keys the cache of a local folder by its path only, so a folder rewritten by a new synthesis run would
    silently load the old rows. Local data is cheap to re-read; the stale split sizes it remembers would then fail
    verification, hence no_checks. Hub datasets keep their cache.
    """
    if os.path.exists(path) or data_files is not None:
        return {"download_mode": "force_redownload", "verification_mode": "no_checks"}
    return {}


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
