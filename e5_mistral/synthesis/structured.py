"""Structured outputs: the JSON schema of every answer, in the request shape each kind of server honours.

Schemas derive from the family definitions (:mod:`e5_mistral.families`): an example is an object with exactly the
family's keys, all required strings, nothing else (the strict subset that OpenAI, vLLM, SGLang and llama.cpp all
enforce). A brainstorm answer is a list of task strings, wrapped as ``{"tasks": [...]}`` where the server needs a
top-level object; the parser reads both shapes.

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
from ..families import family_spec


logger = logging.getLogger(__name__)

RESPONSE_FORMATS = ("auto", "json_schema", "json_object", "none")
SCHEMA_FORMATS = ("json_schema", "json_object")  # tried in this order by ``auto``
BRAINSTORM_KEY = "tasks"
MAX_TASKS_PER_LIST = 30

# The probe: a schema the prompt does not ask for, so only a server that enforces it answers with it.
PROBE_PROMPT = "Reply with one word: hello."
PROBE_SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "string", "enum": ["yes"]}},
    "required": ["ok"],
    "additionalProperties": False,
}
PROBE_MAX_TOKENS = 16
# A probe refused for naming one of these is about the parameter, not the format: the caller changes it and asks again.
CALLER_FIXES = ("max_completion_tokens", "temperature")


# The judge of mined negatives (`e5-mistral mine --judge-model`): is the candidate relevant to the query?
JUDGE_KEY = "relevant"
JUDGE_SCHEMA = {
    "type": "object",
    "properties": {JUDGE_KEY: {"type": "string", "enum": ["yes", "no"]}},
    "required": [JUDGE_KEY],
    "additionalProperties": False,
}


def example_schema(family: str) -> dict:
    keys = family_spec(family).output_keys
    return {
        "type": "object",
        "properties": {key: {"type": "string"} for key in keys},
        "required": list(keys),
        "additionalProperties": False,
    }


def brainstorm_schema(top_level_object: bool) -> dict:
    # the prompt asks for "about 20" tasks; a cap stops a small model that never closes the list
    tasks = {"type": "array", "items": {"type": "string"}, "maxItems": MAX_TASKS_PER_LIST}
    if not top_level_object:
        return tasks
    return {
        "type": "object",
        "properties": {BRAINSTORM_KEY: tasks},
        "required": [BRAINSTORM_KEY],
        "additionalProperties": False,
    }


def _wrap(mode: str, name: str, schema: dict) -> dict | None:
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}
    if mode == "json_object":
        return {"type": "json_object", "schema": schema}
    if mode == "none":
        return None
    raise E5MistralError(f"--response-format must be one of {', '.join(RESPONSE_FORMATS)}, not {mode!r}")


def response_format(mode: str, kind: str, family: str) -> dict | None:
    """The ``response_format`` body field of a request (``None``: send none)."""
    if kind == "judge":
        return _wrap(mode, "judgement", JUDGE_SCHEMA)
    if kind == "brainstorm":
        # OpenAI's strict mode needs an object at the top; llama.cpp's json_object takes the paper's bare list
        return _wrap(mode, f"{family}_tasks", brainstorm_schema(top_level_object=mode == "json_schema"))
    return _wrap(mode, f"{family}_example", example_schema(family))


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
        body["response_format"] = _wrap(mode, "probe", PROBE_SCHEMA)
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
            if finish_reason == "length" and not follows_probe_schema(content):
                # a reasoning model spends hidden tokens out of the cap first: give it the run's own room
                cap = params.get("max_completion_tokens") or params.get("max_tokens") or PROBE_MAX_TOKENS
                content, finish_reason = _answer(await post(probe_body(mode, params, room=cap)))
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
