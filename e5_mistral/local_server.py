"""Local OpenAI-compatible servers on 127.0.0.1 as context managers: start, wait until healthy, stop by PID.

* :func:`llama_cpp_serve`: llama.cpp's own server (the prebuilt ``xllamacpp`` wheel) for a GGUF file; it enforces
  JSON schemas while decoding, so small local models answer in the shape the parser expects.
* :func:`transformers_serve`: ``transformers serve`` for a Hugging Face folder (no structured outputs).

The quickstart and the real-LLM tests use them to put a local model behind the same API that
``e5-mistral generate`` uses for OpenAI, vLLM or Ollama.
"""

from __future__ import annotations

import http.client
import http.server
import importlib.util
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager
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


class _Dispatcher(http.server.ThreadingHTTPServer):
    """Forwards each request to whichever upstream server is free; each upstream serves one request at a time."""

    daemon_threads = True

    def __init__(self, upstreams: list[str]):
        super().__init__(("127.0.0.1", 0), _DispatchHandler)
        self.free: queue.Queue[str] = queue.Queue()
        for upstream in upstreams:
            self.free.put(upstream)


class _DispatchHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = self.server.free.get()
        try:
            connection = http.client.HTTPConnection(upstream, timeout=UPSTREAM_TIMEOUT)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            connection.close()
        finally:
            self.server.free.put(upstream)
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _forward

    def log_message(self, *args) -> None:  # the upstream servers log
        pass


UPSTREAM_TIMEOUT = 3600.0  # one request's wait for a free server plus its decoding; the client times out first


@contextmanager
def llama_cpp_pool(
    gguf: str | os.PathLike, servers: int, log_dir: str | os.PathLike | None = None, **serve_options
) -> Iterator[str]:
    """``servers`` llama.cpp servers of one slot and one thread each, behind one base URL on 127.0.0.1.

    One sequence per server and one thread per sequence keep every answer the same whichever server decodes it
    and whatever runs beside it, given a sampling seed and ``cache_prompt: false`` in each request (a prompt
    processed after another request's cached prefix can come out differently); the servers together use
    ``servers`` cores. Several slots of one server batch their sequences differently from run to run.
    """
    if log_dir:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        upstreams = [
            stack.enter_context(
                llama_cpp_serve(
                    gguf,
                    threads=1,
                    slots=1,
                    log_path=Path(log_dir) / f"llama-server-{n}.log" if log_dir else None,
                    **serve_options,
                )
            )
            for n in range(servers)
        ]
        dispatcher = _Dispatcher([url.removeprefix("http://").removesuffix("/v1") for url in upstreams])
        thread = threading.Thread(target=dispatcher.serve_forever, daemon=True)
        thread.start()
        stack.callback(dispatcher.server_close)
        stack.callback(dispatcher.shutdown)
        yield f"http://127.0.0.1:{dispatcher.server_address[1]}/v1"
