"""A scripted, fault-injecting OpenAI-compatible server on 127.0.0.1, for tests and benchmarks.

It answers ``POST /v1/chat/completions`` with what a ``responder`` returns and, on demand, with the faults
that real endpoints produce: 429 with ``Retry-After``, 500, answers slower than the client timeout,
malformed JSON content, and truncated content with ``finish_reason: "length"``. It counts what it served.

    with FakeOpenAIServer(responder=lambda body: '{"a": 1}', faults=FaultRates(rate_429=0.2)) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test")

Faults are drawn from a generator seeded by (seed, prompt hash, attempt number for that prompt), so a run is
reproducible and a retried request can succeed. ``server.force(kind, n)`` scripts the next ``n`` answers.
Run standalone with ``python -m tests.fake_openai --port 8000 --latency 0.2``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


FAULT_KINDS = ("429", "500", "timeout", "malformed", "truncated", "400")
# How a server treats ``response_format`` (None: it ignores the field):
# "openai" enforces json_schema and accepts json_object without enforcing its schema (OpenAI, vLLM, SGLang);
# "llamacpp" answers 500 to json_schema and enforces json_object + schema (llama-cpp-python);
# "transformers" answers 400 to any response_format (transformers serve).
STRUCTURED_BEHAVIOURS = (None, "openai", "llamacpp", "transformers")


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default listen backlog (5) stalls a client with 64 connections
    daemon_threads = True


@dataclass
class FaultRates:
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    rate_malformed: float = 0.0
    rate_truncated: float = 0.0
    seed: int = 0
    retry_after: float = 0.05  # seconds, sent as the Retry-After header of a 429
    slow_seconds: float = 3.0  # how long a "timeout" answer stalls (set the client timeout below it)

    def draw(self, prompt_hash: str, attempt: int) -> str:
        rng = random.Random(f"{self.seed}:{prompt_hash}:{attempt}")
        x = rng.random()
        rates = (self.rate_429, self.rate_500, self.rate_timeout, self.rate_malformed, self.rate_truncated)
        for kind, rate in zip(FAULT_KINDS, rates):  # "400" is only ever forced
            if x < rate:
                return kind
            x -= rate
        return "ok"


def prompt_hash(body: dict) -> str:
    """A stable id of a request's messages (the model, sampling and other fields are ignored)."""
    return hashlib.sha256(json.dumps(body.get("messages", []), sort_keys=True).encode()).hexdigest()[:16]


def default_responder(body: dict) -> str:
    return '{"answer": "ok"}'


@dataclass
class ServerStats:
    outcomes: Counter = field(default_factory=Counter)  # "ok" / fault kind -> count
    ok_by_prompt: Counter = field(default_factory=Counter)  # prompt hash -> number of 200 answers
    attempts_by_prompt: Counter = field(default_factory=Counter)  # prompt hash -> requests received
    log: list = field(default_factory=list)  # dicts: time, prompt, outcome
    response_formats: list = field(default_factory=list)  # the response_format of every chat request (None: absent)

    @property
    def requests(self) -> int:
        return sum(self.attempts_by_prompt.values())


class FakeOpenAIServer:
    def __init__(
        self,
        responder: Callable[[dict], str | dict] = default_responder,
        faults: FaultRates | None = None,
        latency: float = 0.0,
        port: int = 0,
        api_key: str | None = None,
        structured: str | None = None,
        refuse_max_tokens: bool = False,
        headers: Callable[[str, int], dict] | None = None,
        reasoning_tokens: int | None = None,
    ):
        # As OpenAI's reasoning models (o-series, gpt-5): 400 to max_tokens and to any temperature but 1, and this
        # many hidden reasoning tokens spent out of max_completion_tokens before the answer (an empty answer with
        # finish_reason "length" when the cap leaves no room).
        self.reasoning_tokens = reasoning_tokens
        # extra response headers: (answer kind, 0-based number of the chat request) -> {name: value}; they replace
        # the default Retry-After of a 429 when they name it
        self.headers = headers
        self.refuse_max_tokens = refuse_max_tokens or reasoning_tokens is not None  # 400 to max_tokens
        if structured not in STRUCTURED_BEHAVIOURS:
            raise ValueError(f"structured must be one of {STRUCTURED_BEHAVIOURS}")
        self.structured = structured
        self.responder = responder
        self.faults = faults or FaultRates()
        self.latency = latency
        self.api_key = api_key
        self.stats = ServerStats()
        self._forced: list[str] = []
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", port), self._handler_class())
        self._thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def force(self, kind: str, n: int = 1) -> None:
        """Answer the next ``n`` chat requests with ``kind`` ("ok" or a fault kind), before any drawn fault."""
        if kind not in FAULT_KINDS + ("ok",):
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            self._forced.extend([kind] * n)

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = ServerStats()

    def start(self) -> "FakeOpenAIServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- request handling ---------------------------------------------------------------------------
    def _decide(self, phash: str) -> tuple[str, int]:
        with self._lock:
            number = len(self.stats.log)
            attempt = self.stats.attempts_by_prompt[phash]
            self.stats.attempts_by_prompt[phash] += 1
            kind = self._forced.pop(0) if self._forced else self.faults.draw(phash, attempt)
            self.stats.outcomes[kind] += 1
            if kind in ("ok", "malformed", "truncated"):
                self.stats.ok_by_prompt[phash] += 1
            self.stats.log.append({"time": time.time(), "prompt": phash, "outcome": kind})
        return kind, number

    def _format_refusal(self, body: dict) -> tuple[int, str] | None:
        """The status and message with which this server refuses the request's response_format, if it does."""
        kind = (body.get("response_format") or {}).get("type")
        if kind is None or self.structured is None:
            return None
        if self.structured == "transformers":
            return 400, "response_format is not supported"
        if self.structured == "llamacpp" and kind == "json_schema":
            return 500, "Unrecognized response_format type: json_schema"
        return None

    def _enforced(self, body: dict) -> str | None:
        """An answer that follows the request's schema, where this server enforces it and the schema fixes the
        answer (every property an enum); else None (the responder's answer stands)."""
        fmt = body.get("response_format") or {}
        enforcing = (self.structured == "openai" and fmt.get("type") == "json_schema") or (
            self.structured == "llamacpp" and fmt.get("type") == "json_object"
        )
        schema = (
            (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else fmt.get("schema")
        )
        properties = (schema or {}).get("properties") or {}
        if enforcing and properties and all("enum" in p for p in properties.values()):
            return json.dumps({key: p["enum"][0] for key, p in properties.items()})
        return None

    def _completion(self, body: dict, kind: str) -> dict:
        answer = self._enforced(body) or self.responder(body)
        if isinstance(answer, str):
            answer = {"content": answer}
        content = answer["content"]
        finish_reason = answer.get("finish_reason", "stop")
        if kind == "malformed":
            content = "Sure! Here is the JSON you asked for: {" + content[: max(1, len(content) // 3)]
        elif kind == "truncated":
            content, finish_reason = content[: max(1, len(content) // 2)], "length"
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        prompt_tokens, completion_tokens = max(1, prompt_chars // 4), max(1, len(content) // 4)
        if self.reasoning_tokens is not None:
            completion_tokens += self.reasoning_tokens
            if completion_tokens > body.get("max_completion_tokens", completion_tokens):
                content, finish_reason, completion_tokens = "", "length", body["max_completion_tokens"]
        return {
            "id": "chatcmpl-" + prompt_hash(body),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out as two writes: with Nagle on, the body waits for the client's delayed
            # ACK of the headers (~40 ms per answer), which no real server adds
            disable_nagle_algorithm = True

            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout fault): nothing to do

            def do_GET(self):
                if self.path.rstrip("/") in ("/health", "/v1/health"):
                    self._send(200, {"status": "ok"})
                elif self.path.rstrip("/") == "/v1/models":
                    self._send(
                        200, {"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "test"}]}
                    )
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
                    return
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "request body is not JSON"}})
                    return
                with server._lock:
                    server.stats.response_formats.append(body.get("response_format"))
                refusal = server._format_refusal(body)
                if server.refuse_max_tokens and "max_tokens" in body:
                    refusal = (
                        400,
                        "Unsupported parameter: 'max_tokens' is not supported with this model. "
                        "Use 'max_completion_tokens' instead.",
                    )
                if server.reasoning_tokens is not None and body.get("temperature", 1) != 1:
                    refusal = (
                        400,
                        f"Unsupported value: 'temperature' does not support {body['temperature']} with this model. "
                        "Only the default (1) value is supported.",
                    )
                if refusal is not None:
                    with server._lock:
                        server.stats.attempts_by_prompt[prompt_hash(body)] += 1
                        server.stats.outcomes["format_refused"] += 1
                    self._send(refusal[0], {"error": {"message": refusal[1], "type": "invalid_request_error"}})
                    return
                kind, number = server._decide(prompt_hash(body))
                extra = server.headers(kind, number) if server.headers else {}
                if server.latency:
                    time.sleep(server.latency)
                if kind == "429":
                    self._send(
                        429,
                        {"error": {"message": "rate limited", "type": "rate_limit_exceeded"}},
                        {"Retry-After": str(server.faults.retry_after), **extra},
                    )
                elif kind == "500":
                    self._send(500, {"error": {"message": "internal error", "type": "server_error"}}, extra)
                elif kind == "400":
                    self._send(
                        400,
                        {
                            "error": {
                                "message": "this request is invalid: 'max_tokens' is not supported",
                                "type": "invalid_request_error",
                            }
                        },
                        extra,
                    )
                else:
                    if kind == "timeout":
                        time.sleep(server.faults.slow_seconds)
                    self._send(200, server._completion(body, kind), extra)

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    server = FakeOpenAIServer(latency=args.latency, port=args.port)
    print(f"serving on {server.base_url}", flush=True)
    server._httpd.serve_forever()


if __name__ == "__main__":
    main()
