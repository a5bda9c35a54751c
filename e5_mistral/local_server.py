"""``transformers serve`` on 127.0.0.1 as a context manager: start, wait until healthy, stop by PID.

The quickstart and the real-LLM tests use it to put SmolLM2-135M-Instruct behind the same OpenAI-compatible
API that ``e5-mistral generate`` uses for OpenAI, vLLM or Ollama.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sampling_body(max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0) -> str:
    """``--extra-body`` for ``transformers serve``: it samples only when sent a generation_config with do_sample.

    ``temperature`` 0 means greedy decoding.
    """
    config = (
        {"do_sample": False, "max_new_tokens": max_new_tokens}
        if temperature == 0
        else {"do_sample": True, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}
    )
    return json.dumps({"generation_config": json.dumps(config)})


def _serve_command() -> list[str]:
    executable = shutil.which("transformers", path=os.path.dirname(sys.executable)) or shutil.which("transformers")
    if executable is None:
        raise RuntimeError(
            "the `transformers` command is missing; install the serving extra: pip install 'e5-mistral[serve]'"
        )
    return [executable, "serve"]


@contextmanager
def transformers_serve(
    model_dir: str | os.PathLike,
    port: int | None = None,
    continuous_batching: bool = False,
    startup_timeout: float = 180.0,
    log_path: str | os.PathLike | None = None,
) -> Iterator[str]:
    """Serve ``model_dir`` on 127.0.0.1 and yield its base URL (``http://127.0.0.1:PORT/v1``)."""
    port = port or free_port()
    # `GET /v1/models` needs the hub cache folder to exist, even offline.
    hf_home = Path(os.environ.get("HF_HOME", Path(tempfile.gettempdir()) / "e5-mistral-hf-home"))
    (hf_home / "hub").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    command = _serve_command() + [str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    if continuous_batching:
        command.append("--continuous-batching")
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT if log_path else subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"transformers serve exited with code {process.returncode} before it was ready"
                    + (f" (log: {log_path})" if log_path else "")
                )
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"transformers serve was not ready on 127.0.0.1:{port} after {startup_timeout:.0f} s"
                    )
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if log_path:
            log.close()
