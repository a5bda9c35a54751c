"""Structured outputs: a JSON schema in the request shape each kind of server honours, and the probe that asks an
endpoint once which shape it enforces.

Request shapes (``--response-format``):

* ``json_schema``: ``{"type": "json_schema", "json_schema": {"name", "strict": true, "schema"}}`` (OpenAI, Azure,
  vLLM, SGLang, and llama.cpp's own server);
* ``json_object``: ``{"type": "json_object", "schema": ...}`` (llama.cpp and llama-cpp-python, which answers 500
  to ``json_schema``);
* ``none``: no ``response_format`` (``transformers serve`` answers 400 to any);
* ``auto``: :func:`detect` asks the endpoint once, with a tiny request, which shape it enforces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import E5MistralError


logger = logging.getLogger(__name__)

RESPONSE_FORMATS = ("auto", "json_schema", "json_object", "none")
SCHEMA_FORMATS = ("json_schema", "json_object")  # tried in this order by ``auto``
# The probe: a schema the prompt does not ask for, so only a server that enforces it answers with it.
PROBE_PROMPT = "Reply with one word: hello."
PROBE_SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "string", "enum": ["yes"]}},
    "required": ["ok"],
    "additionalProperties": False,
}
PROBE_MAX_TOKENS = 16
# A reasoning model spends hidden tokens out of the completion cap before it answers: at least this much room for
# its answers (billed as used).
REASONING_ROOM = 1024
# A probe refused for naming one of these is about the parameter, not the format: the caller changes it and asks again.
CALLER_FIXES = ("max_completion_tokens", "temperature")


def wrap_schema(mode: str, name: str, schema: dict) -> dict | None:
    """``schema`` in the request shape of ``mode`` (None for ``none``: no response_format is sent)."""
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}
    if mode == "json_object":
        return {"type": "json_object", "schema": schema}
    if mode == "none":
        return None
    raise E5MistralError(f"--response-format must be one of {', '.join(RESPONSE_FORMATS)}, not {mode!r}")


@dataclass
class Detection:
    """What ``auto`` found: the format to use and, per format tried, why it was not taken."""

    chosen: str
    refused: dict[str, str]

    def to_dict(self) -> dict:
        return {"chosen": self.chosen, "refused": dict(self.refused)}


def probe_body(mode: str, params: dict, room: int = PROBE_MAX_TOKENS) -> dict:
    """A tiny request with ``mode``'s schema (none for ``none``), the run's model and extra body, greedy (unless the
    model takes only its default sampling) and ``room`` tokens long."""
    cap = "max_completion_tokens" if "max_completion_tokens" in params else "max_tokens"  # as the run sends it
    body = {
        "model": params.get("model"),
        "messages": [{"role": "user", "content": PROBE_PROMPT}],
        **({"temperature": 0} if "temperature" in params else {}),
        cap: room,
    }
    if mode != "none":
        body["response_format"] = wrap_schema(mode, "probe", PROBE_SCHEMA)
    return {**body, **(params.get("extra_body") or {})}


def _answer(answer) -> tuple[str | None, str | None]:
    """(content, finish_reason) of a decoded chat completion."""
    choice = (answer.get("choices") or [{}])[0] if isinstance(answer, dict) else {}
    return (choice.get("message") or {}).get("content"), choice.get("finish_reason")


def follows_probe_schema(content: str | None) -> bool:
    import json

    try:
        return json.loads(content or "") == {"ok": "yes"}
    except json.JSONDecodeError:
        return False


async def detect(post, params: dict, modes: tuple[str, ...] = SCHEMA_FORMATS) -> Detection:
    """The first of ``modes`` the endpoint enforces, else ``none``.

    ``post(body)`` sends one request (retrying only rate limits and connection errors) and returns the decoded
    answer; it raises ``openai.APIStatusError`` for an HTTP error. A 4xx about a format is an answer about the
    format, never a transient fault: it is recorded, not retried. A 5xx may be either (llama-cpp-python answers
    500 to ``json_schema``), so the same request without a schema tells them apart: if that one fails too, the
    server is failing and the error propagates. Fatal statuses (401/403/404) propagate.
    """
    import openai

    refused: dict[str, str] = {}
    for mode in modes:
        try:
            content, finish_reason = _answer(await post(probe_body(mode, params)))
            if finish_reason == "length" and not (content or "").strip():
                # cut before a word: a reasoning model spent the cap on hidden reasoning; give it room (a model
                # that rambles past the 16 tokens answered, and is not asked again)
                cap = params.get("max_completion_tokens") or params.get("max_tokens") or 0
                content, finish_reason = _answer(await post(probe_body(mode, params, room=max(cap, REASONING_ROOM))))
        except openai.APIStatusError as err:
            if err.status_code in (401, 403, 404) or any(p in str(err.message) for p in CALLER_FIXES):
                raise  # fatal, or about a parameter rather than the format (the caller changes it and asks again)
            if err.status_code >= 500:
                await post(probe_body("none", params))  # raises when the server fails whatever the format
            refused[mode] = f"HTTP {err.status_code}: {' '.join(str(err.message).split())[:200]}"
            continue
        if follows_probe_schema(content):
            return Detection(mode, refused)
        refused[mode] = f"answered without following the schema: {str(content)[:80]!r}"
    return Detection("none", refused)
