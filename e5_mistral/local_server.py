"""Local OpenAI-compatible servers on 127.0.0.1 as context managers: start, wait until healthy, stop by PID.

* :func:`llama_cpp_serve`: llama.cpp's own server (the prebuilt ``xllamacpp`` wheel) for a GGUF file; it enforces
  JSON schemas while decoding, so small local models answer in the shape the parser expects.
* :func:`transformers_serve`: ``transformers serve`` for a Hugging Face folder (no structured outputs).

The quickstart and the real-LLM tests use them to put a local model behind the same API that
``e5-mistral generate`` uses for OpenAI, vLLM or Ollama.
"""

from __future__ import annotations

import importlib.util
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

from .errors import E5MistralError


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
        raise E5MistralError(
            "the `transformers` command is missing; install the serving extra: pip install 'e5-mistral[serve]'"
        )
    return [executable, "serve"]


@contextmanager
def _served(
    command: list[str],
    name: str,
    port: int,
    env: dict | None,
    startup_timeout: float,
    log_path: str | os.PathLike | None,
) -> Iterator[str]:
    """Start ``command`` (a server on 127.0.0.1:``port``), wait until ``/health`` answers 200, yield the base URL,
    and stop it by PID (SIGTERM, then SIGKILL) however the block ends."""
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT if log_path else subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise E5MistralError(
                    f"{name} exited with code {process.returncode} before it was ready"
                    + (f" (log: {log_path})" if log_path else "")
                )
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)  # 503 while a model loads
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise E5MistralError(f"{name} was not ready on 127.0.0.1:{port} after {startup_timeout:.0f} s")
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
    with _served(command, "transformers serve", port, env, startup_timeout, log_path) as base_url:
        yield base_url


@contextmanager
def llama_cpp_serve(
    gguf: str | os.PathLike,
    port: int | None = None,
    threads: int | None = None,
    slots: int = 1,
    context: int | None = None,
    startup_timeout: float = 120.0,
    log_path: str | os.PathLike | None = None,
) -> Iterator[str]:
    """Serve a GGUF file with llama.cpp's own server (``xllamacpp``) on 127.0.0.1, in a process of its own.

    llama.cpp spins its threads: give it the cores while it generates (another CPU-heavy process on the same
    cores slows it about twentyfold). ``threads`` defaults to every core of this machine.
    """
    if importlib.util.find_spec("xllamacpp") is None:
        raise E5MistralError("the local llama.cpp server needs the xllamacpp package: pip install 'e5-mistral[serve]'")
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "e5_mistral.llama_server",
        "--model",
        str(gguf),
        "--port",
        str(port),
        "--threads",
        str(threads or os.cpu_count() or 1),
        "--slots",
        str(slots),
        *(["--context", str(context)] if context else []),
    ]
    with _served(command, "the llama.cpp server", port, None, startup_timeout, log_path) as base_url:
        yield base_url
