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
