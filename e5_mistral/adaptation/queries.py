"""Step 1 of corpus adaptation: the LLM reads a passage and writes a retrieval task (an instruction in the paper's
style) and a query the passage answers (Gecko's first step; Promptagator's and GPL's query generation).

The query's kind is sampled per request from the paper's short-long slots (query type, length, clarity,
difficulty), seeded by the passage and the query's number, so two runs ask the same questions. The answer is a JSON
object ``{"task", "query"}``, schema-enforced where the endpoint can; a preamble or a copied passage is rejected,
never stored as a query.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from ..hub.schema import slot_values
from ..llm.answers import Rejected, extract_json
from ..llm.formats import wrap_schema
from ..llm.journal import STATUS_OK, Request, chat_request, request_id
from ..text import match_key
from .corpus import Passage


PROMPT = (Path(__file__).parent / "query_prompt.txt").read_text(encoding="utf-8").removesuffix("\n")
PROMPT_VERSION = hashlib.sha256(PROMPT.encode("utf-8")).hexdigest()[:12]
FAMILY = "short_long"  # the paper's retrieval family: rows are (query, positive document, hard negative document)
SLOTS = ("query_type", "query_length", "clarity", "difficulty")  # of the family's slots, those a query has
SCHEMA = {
    "type": "object",
    "properties": {"task": {"type": "string"}, "query": {"type": "string"}},
    "required": ["task", "query"],
    "additionalProperties": False,
}
MAX_QUERY_WORDS = 64  # a longer "query" is a passage or an explanation, not what a user types


def sample_slots(passage: Passage, number: int, seed: int) -> dict[str, str]:
    """The kind of query asked for: one value per slot, drawn from (seed, passage, number)."""
    rng = random.Random(f"e5-mistral:{seed}:corpus:{passage.passage_id}:{number}")
    values = slot_values(FAMILY)
    return {name: rng.choice(values[name]) for name in SLOTS}


def query_request(passage: Passage, number: int, seed: int, params: dict) -> Request:
    """The chat request for query ``number`` of ``passage``; its id hashes the prompt as sent, so it changes with
    the passage's text and nothing else about the corpus."""
    prompt = PROMPT.format(passage=passage.text, **sample_slots(passage, number, seed))
    rid = request_id({"kind": "corpus_query", "prompt": prompt, "params": dict(params), "seed": seed})
    schema = wrap_schema(params["response_format"], "corpus_query", SCHEMA) if "response_format" in params else None
    return chat_request(rid, "corpus_query", FAMILY, prompt, params, schema)


def parse_query(record, passage: Passage) -> tuple[str, str]:
    """(task, query) of an answer; ``Rejected`` with a reason code when it is not usable."""
    if record is None or record["status"] != STATUS_OK:
        raise Rejected("failed")
    if record["finish_reason"] == "length":
        raise Rejected("truncated")
    answer = extract_json(record["content"] or "")
    if not isinstance(answer, dict):
        raise Rejected("not_an_object")
    fields = {}
    for key in ("task", "query"):
        value = answer.get(key)
        if not isinstance(value, str) or not value.strip():
            raise Rejected(f"missing_key:{key}")
        fields[key] = " ".join(value.split())
    query = fields["query"]
    if len(query.split()) > MAX_QUERY_WORDS:
        raise Rejected("query_too_long")
    if match_key(query) in match_key(passage.text):
        raise Rejected("query_copied_from_passage")
    return fields["task"], query
