"""Step 1 of corpus adaptation: the LLM reads a passage and writes a retrieval task (an instruction in the paper's
style) and a query the passage answers (Gecko's first step; Promptagator's and GPL's query generation).

The query's kind is sampled per request from the paper's short-long slots (query type, length, clarity,
difficulty), seeded by the passage and the query's number, so two runs ask the same questions. The answer is a JSON
object ``{"task", "query"}``, schema-enforced where the endpoint can; a preamble, a copied passage or the prompt's
own instruction written back is rejected, never stored as a query.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

from ..hub.schema import slot_values
from ..llm.answers import Rejected, extract_json
from ..llm.formats import wrap_schema
from ..llm.journal import STATUS_OK, Request, chat_request, request_id
from ..text import match_key
from .corpus import Passage


def _template(name: str) -> str:
    return (Path(__file__).parent / name).read_text(encoding="utf-8").removesuffix("\n")


PROMPT = _template("query_prompt.txt")  # the LLM brainstorms the task, then writes a query of it
TASK_PROMPT = _template("query_for_task_prompt.txt")  # the user names the task (--task): the LLM writes the query
FAMILY = "short_long"  # the paper's retrieval family: rows are (query, positive document, hard negative document)
SLOTS = ("query_type", "query_length", "clarity", "difficulty")  # of the family's slots, those a query has


def _schema(*keys: str) -> dict:
    properties = {key: {"type": "string"} for key in keys}
    return {"type": "object", "properties": properties, "required": list(keys), "additionalProperties": False}


SCHEMA, TASK_SCHEMA = _schema("task", "query"), _schema("query")


def prompt_version(task: str | None = None) -> str:
    """The template's digest, stored with each row (the task itself is in the row)."""
    return hashlib.sha256((TASK_PROMPT if task else PROMPT).encode("utf-8")).hexdigest()[:12]


MAX_QUERY_WORDS = 64  # a longer "query" is a passage or an explanation, not what a user types


def sample_slots(passage: Passage, number: int, seed: int) -> dict[str, str]:
    """The kind of query asked for: one value per slot, drawn from (seed, passage, number)."""
    rng = random.Random(f"e5-mistral:{seed}:corpus:{passage.passage_id}:{number}")
    values = slot_values(FAMILY)
    return {name: rng.choice(values[name]) for name in SLOTS}


def query_request(passage: Passage, number: int, seed: int, params: dict, task: str | None = None) -> Request:
    """The chat request for query ``number`` of ``passage`` (of ``task`` when given); its id hashes the prompt as
    sent, so it changes with the passage's text and nothing else about the corpus."""
    slots = sample_slots(passage, number, seed)
    prompt = (
        TASK_PROMPT.format(passage=passage.text, task=task, **slots)
        if task
        else PROMPT.format(passage=passage.text, **slots)
    )
    rid = request_id({"kind": "corpus_query", "prompt": prompt, "params": dict(params), "seed": seed})
    wanted = TASK_SCHEMA if task else SCHEMA
    schema = wrap_schema(params["response_format"], "corpus_query", wanted) if "response_format" in params else None
    return chat_request(rid, "corpus_query", FAMILY, prompt, params, schema)


def parse_query(record, passage: Passage, task: str | None = None) -> tuple[str, str]:
    """(task, query) of an answer (``task``, when given, is the user's); ``Rejected`` with a reason code when it is
    not usable."""
    if record is None or record["status"] != STATUS_OK:
        raise Rejected("failed")
    if record["finish_reason"] == "length":
        raise Rejected("truncated")
    answer = extract_json(record["content"] or "")
    if not isinstance(answer, dict):
        raise Rejected("not_an_object")
    fields = {"task": task}
    for key in ("query",) if task else ("task", "query"):
        value = answer.get(key)
        if not isinstance(value, str) or not value.strip():
            raise Rejected(f"missing_key:{key}")
        fields[key] = " ".join(value.split())
    query = fields["query"]
    if len(query.split()) > MAX_QUERY_WORDS:
        raise Rejected("query_too_long")
    if match_key(query) in match_key(passage.text):
        raise Rejected("query_copied_from_passage")
    if _opening(query) == _opening(fields["task"]):
        raise Rejected("query_repeats_task")  # "Given a news headline, ..." is the instruction, not a search
    if _trigrams(query) & (_TASK_PROMPT_TRIGRAMS if task else _PROMPT_TRIGRAMS):
        raise Rejected("query_repeats_prompt")  # a small model echoes "Brainstorm a text retrieval task for which ..."
    return fields["task"], query


def _words(text: str) -> list[str]:
    """Case-folded words, punctuation dropped: how a query is compared with its task and the prompt."""
    return re.sub(r"[^\w\s]", " ", text.casefold()).split()


def _opening(text: str, words: int = 3) -> list[str]:
    return _words(text)[:words]


# words too common to mark an echo: "the language of the passage" must not reject "the language of the Hittites"
STOPWORDS = frozenset(
    "a an the of to for in on at by as from with and or but not is are be been have this that which it its "
    "you your yourself must should do does one two any each what how who when where why then than into about s".split()
)


def _trigrams(text: str) -> set[tuple[str, ...]]:
    """Runs of three consecutive content words of ``text``."""
    words = [w for w in _words(text) if w not in STOPWORDS]
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}


def _instruction_trigrams(template: str) -> set[tuple[str, ...]]:
    """The template's own instruction, without the passage and the sampled slots it is filled with."""
    return _trigrams(re.sub(r"\{\w+\}", " ", template))


# a query sharing three content words in a row with its prompt's instruction repeats it instead of searching
_PROMPT_TRIGRAMS, _TASK_PROMPT_TRIGRAMS = _instruction_trigrams(PROMPT), _instruction_trigrams(TASK_PROMPT)
