"""An exclusive lock on an output folder, so two runs never write one journal and pay for the same plan twice.

``flock`` on ``OUTPUT/.lock``: the kernel releases it when its holder exits, however it exits (a SIGKILL too), so
a stale lock from a killed run is simply taken over. The file names its holder's PID for the message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import E5MistralError


LOCK_NAME = ".lock"


class OutputLock:
    def __init__(self, folder: str | os.PathLike, command: str = "e5-mistral generate"):
        self.folder, self.command = Path(folder), command
        self._handle = None

    def __enter__(self) -> "OutputLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / LOCK_NAME, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise E5MistralError(
                f"{self.folder} is in use by {holder}; wait for it to finish (or stop it) before running again, "
                "or choose another --output"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{self.command} (PID {os.getpid()})\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
