"""Which instruction each mteb task gets, expressed as mteb ``model_prompts``.

As the paper's evaluation code: retrieval puts ``Instruct: {task}\\nQuery: `` before queries only (documents are
bare); every other task type (STS, pair classification, bitext mining, classification, clustering, reranking,
summarization) puts it before every input. mteb picks the prompt by task name and prompt type
(``"{task}-query"``, ``"{task}-document"``, ``"{task}"``), so no text is prefixed by hand.
"""

from __future__ import annotations

import logging

from ..errors import E5MistralError
from ..instructions import BITEXT_TASK, STS_TASK, evaluation_instruction, query_prompt


logger = logging.getLogger(__name__)

MODES = ("paper", "none")
# Task types whose documents are encoded without instruction; everything else is symmetric.
QUERY_ONLY_TYPES = frozenset({"Retrieval", "InstructionRetrieval", "InstructionReranking"})
# Used, with a log line, for tasks the paper's table does not list.
DEFAULT_INSTRUCTIONS = {
    "STS": STS_TASK,
    "PairClassification": STS_TASK,
    "BitextMining": BITEXT_TASK,
    "Summarization": "Given a news summary, retrieve other semantically similar summaries",
    "Retrieval": "Given a query, retrieve relevant documents that answer the query",
    "Reranking": "Given a query, retrieve relevant documents that answer the query",
    "Classification": "Classify the given text",
    "MultilabelClassification": "Classify the given text",
    "Clustering": "Identify the topic or theme of the given texts",
}
GENERIC_INSTRUCTION = "Retrieve semantically similar text."


def task_instruction(task_name: str, task_type: str, model_prompts: dict[str, str] | None = None) -> tuple[str, str]:
    """(instruction, source): the paper's table first, then a model prompt named after the task, then a default."""
    instruction = evaluation_instruction(task_name)
    if instruction is not None:
        return instruction, "paper"
    if model_prompts and model_prompts.get(task_name):
        return model_prompts[task_name], "model"
    return DEFAULT_INSTRUCTIONS.get(task_type, GENERIC_INSTRUCTION), "default"


def task_prompts(task_name: str, task_type: str, prefix: str) -> dict[str, str]:
    """The prompts that make stock mteb encode one task as the paper does, keyed as mteb looks them up.

    mteb tries ``{task}-{query|document}`` first, then ``{task}``: a retrieval task gets its instruction under
    ``{task}-query`` and an explicitly bare ``{task}-document``; every other type gets it under ``{task}``, for
    every input.
    """
    if task_type in QUERY_ONLY_TYPES:
        return {f"{task_name}-query": prefix, f"{task_name}-document": ""}
    return {task_name: prefix}


def model_prompts_for(tasks, mode: str, model_prompts: dict[str, str] | None = None) -> dict[str, str]:
    """mteb ``model_prompts`` giving every task an explicit prompt for every input ('' where none applies).

    Explicit empty prompts keep a model's own ``query``/``document`` prompts from leaking into the run.
    A prompt found in ``model_prompts`` under the task's name is used as is (it is already a full prefix).
    """
    if mode not in MODES:
        raise E5MistralError(f"--instructions must be one of {', '.join(MODES)}, got {mode!r}")
    prompts: dict[str, str] = {}
    for task in tasks:
        name, task_type = task.metadata.name, task.metadata.type
        if mode == "none":
            prefix = ""
        else:
            instruction, source = task_instruction(name, task_type, model_prompts)
            prefix = instruction if source == "model" else query_prompt(instruction)
            if source == "default":
                logger.warning(
                    "%s is not in the paper's instruction table: using the %s default %r", name, task_type, instruction
                )
            elif source == "model":
                logger.warning(
                    "%s is not in the paper's instruction table: using the model's own prompt %r", name, prefix
                )
        # Explicit keys for every prompt type, so a model's own prompts never apply; symmetric evaluators encode
        # with no prompt type, and mteb then looks the task name up alone.
        document = task_prompts(name, task_type, prefix).get(f"{name}-document", prefix)
        prompts.update({f"{name}-query": prefix, f"{name}-document": document, name: document})
    return prompts
