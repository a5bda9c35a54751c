"""Where a command may write: one rule for every command that writes a folder (export, decontaminate, mine,
filter, merge).

An output folder may not be an input, lie inside one, or hold one (replacing it would delete what is being
read); a folder with a journal of paid LLM answers is never replaced; and a non-empty folder is replaced only
with ``--overwrite``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .errors import E5MistralError


JOURNAL_FOLDER = "journal"  # what `e5-mistral generate` and the mining judge keep their paid answers in


def _overlap(output: Path, source: Path) -> bool:
    return output == source or output in source.parents or source in output.parents


def check_apart(output: str | os.PathLike, inputs: Iterable[str | os.PathLike], flag: str = "--output") -> Path:
    """The resolved output folder, refused when it is one of ``inputs``, lies inside one or holds one."""
    resolved = Path(output).expanduser().resolve()
    if resolved.is_file():
        raise E5MistralError(f"{flag} {output} is a file, not a folder")
    for source in inputs:
        if _overlap(resolved, Path(source).expanduser().resolve()):
            raise E5MistralError(
                f"{flag} {output} overlaps the input {source} (the same folder, or one inside the other); "
                "choose a folder apart from it"
            )
    return resolved


def check_replaceable(output: Path, overwrite: bool, flag: str = "--output") -> None:
    """Refuse to replace a non-empty folder without ``overwrite``, and one holding a journal of paid answers."""
    if not (output.is_dir() and any(output.iterdir())):
        return
    journal = next((p for p in output.rglob(JOURNAL_FOLDER) if p.is_dir()), None)
    if journal is not None:
        raise E5MistralError(f"{flag} {output} holds a journal of LLM answers ({journal}); refusing to replace it")
    if not overwrite:
        raise E5MistralError(f"{flag} {output} is not empty; pass --overwrite to replace it")


def check_output_folder(
    output: str | os.PathLike, inputs: Iterable[str | os.PathLike], overwrite: bool, flag: str = "--output"
) -> Path:
    """:func:`check_apart` and :func:`check_replaceable`: for commands that write a whole new folder."""
    resolved = check_apart(output, inputs, flag)
    check_replaceable(resolved, overwrite, flag)
    return resolved
