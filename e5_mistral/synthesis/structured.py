"""The JSON schemas of the paper's answers, in the shape the endpoint enforces (:mod:`e5_mistral.llm.formats`).

Schemas derive from the family definitions (:mod:`e5_mistral.families`): an example is an object with exactly the
family's keys, all required strings, nothing else (the strict subset that OpenAI, vLLM, SGLang and llama.cpp all
enforce). A brainstorm answer is a list of task strings, wrapped as ``{"tasks": [...]}`` where the server needs a
top-level object; the parser reads both shapes.
"""

from __future__ import annotations

from ..families import family_spec
from ..llm.formats import wrap_schema


BRAINSTORM_KEY = "tasks"
MAX_TASKS_PER_LIST = 30


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


def response_format(mode: str, kind: str, family: str) -> dict | None:
    """The ``response_format`` body field of a request (``None``: send none)."""
    if kind == "brainstorm":
        # OpenAI's strict mode needs an object at the top; llama.cpp's json_object takes the paper's bare list
        return wrap_schema(mode, f"{family}_tasks", brainstorm_schema(top_level_object=mode == "json_schema"))
    return wrap_schema(mode, f"{family}_example", example_schema(family))
