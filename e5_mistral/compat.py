"""Every use of a library's private name, in one place, each with a test that fails when the library changes it.

A public API is used wherever one does the job; what is here has none.
"""

from __future__ import annotations

import argparse


class DefaultOnceHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends an option's default to its help unless the help already names one, or there is nothing to show (no
    default, or a flag that is off). argparse documents only the formatter classes' names; ``_get_help_string`` is
    the method ``ArgumentDefaultsHelpFormatter`` itself overrides."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False):
            return text
        return super()._get_help_string(action)


def move_to_group(parser: argparse.ArgumentParser, action: argparse.Action, group) -> None:
    """List ``action`` under ``group`` in ``--help`` (parsing does not change: groups only format help). argparse
    has no public way to move an option that ``HfArgumentParser`` already added."""
    for holder in parser._action_groups:
        if action in holder._group_actions:
            holder._group_actions.remove(action)
    group._group_actions.append(action)


# -- openai: the client's own retry policy, reused so that the backend retries exactly what the client would -------
# Copies of openai._constants (imported nowhere at run time; the tests check them against the library).
OPENAI_RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"  # asks `client.post` for the raw response, headers included
OPENAI_MAX_RETRY_AFTER_DELAY = 120  # seconds: a longer Retry-After is not waited for, as the client does


def openai_should_retry(client, response) -> bool:
    """Whether the openai client would retry this HTTP response (408, 409, 429, 5xx; ``x-should-retry`` wins)."""
    return client._should_retry(response)


def openai_retry_after(client, headers) -> float | None:
    """The delay a response asks for (``retry-after-ms``, ``Retry-After`` in seconds or as an HTTP date)."""
    return client._parse_retry_after_header(headers)


# -- transformers ---------------------------------------------------------------------------------------------------
def save_model_without_push(trainer, output_dir: str) -> None:
    """``Trainer.save_model`` without the push it makes when ``push_to_hub`` is set, so that the run's one push
    carries the card's metadata (``_internal_call`` is the Trainer's own switch for that)."""
    trainer.save_model(output_dir, _internal_call=True)


# -- mteb -----------------------------------------------------------------------------------------------------------
def load_task_data(task, data: dict, splits: list[str] | None = None, subsets: list[str] | None = None) -> None:
    """Give an mteb task its data from local files instead of the Hub: what ``load_data`` would set, set directly
    (mteb has no public way to evaluate a known task on local data)."""
    if splits is not None:
        task.filter_eval_splits(splits)
    if subsets is not None:
        task.hf_subsets = subsets
    task.dataset = data
    task.data_loaded = True
