"""llama.cpp's own OpenAI-compatible server (the prebuilt ``xllamacpp`` wheel) as a process of its own.

``python -m e5_mistral.llama_server --model FILE.gguf --port P`` serves on 127.0.0.1 until SIGTERM or SIGINT.
The server enforces JSON schemas (``response_format`` json_schema, and llama.cpp's json_object + schema) while
decoding, so even a small local model answers in the shape the parser expects. The quickstart and tests start it
through :func:`e5_mistral.local_server.llama_cpp_serve`, which waits for ``/health`` and stops it by PID.
"""

from __future__ import annotations

import argparse
import signal
import threading


# One sequence at a time gives the same answers on every run. On 2 cores, 2 slots decode about 1.4x the tokens a
# second (Qwen2.5-Coder-0.5B: 21-22 vs 15, measured 2026-11-29), but batching makes answers differ run to run.
DEFAULT_SLOTS = 1
DEFAULT_CONTEXT_PER_SLOT = 4096  # the paper's prompts (~300-600 tokens) plus a long answer


def serve(
    model: str,
    port: int,
    threads: int,
    slots: int = DEFAULT_SLOTS,
    context: int | None = None,
    alias: str | None = None,
) -> None:
    """Start the server in this process and block until SIGTERM / SIGINT."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = model
    if alias:
        params.model_alias = alias
    params.hostnames = ["127.0.0.1"]  # never listen beyond this machine
    params.port = port
    params.n_parallel = slots
    params.n_ctx = context or slots * DEFAULT_CONTEXT_PER_SLOT  # shared by all slots
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server = xllamacpp.Server(params)  # serves from its own threads while this object lives
    try:
        stop.wait()
    finally:
        del server


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e5_mistral.llama_server", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a GGUF file")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for decoding and prompt processing")
    parser.add_argument("--slots", type=int, default=DEFAULT_SLOTS, help="requests decoded at once")
    parser.add_argument("--context", type=int, default=None, help="context tokens shared by all slots")
    parser.add_argument("--alias", default=None, help="the model name the server reports")
    args = parser.parse_args(argv)
    serve(args.model, args.port, args.threads, args.slots, args.context, args.alias)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
