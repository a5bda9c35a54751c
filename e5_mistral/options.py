"""Command-line options as dataclass fields: one help text and a default, read by ``HfArgumentParser``.

``cli.CommandParser`` shows a field's default unless its help already names one, and lists the fields under the
groups of the dataclass's ``HELP_GROUPS`` (group name -> field names), in that order.
"""

from __future__ import annotations

from dataclasses import MISSING, field


def option(text: str, default=MISSING, *, default_factory=MISSING, **metadata):
    """A dataclass field for one flag: its help ``text`` and its ``default`` or ``default_factory`` (neither: the flag
    is required); other keywords (e.g. ``choices``) join the metadata."""
    defaults = {"default": default, "default_factory": default_factory}
    return field(metadata={"help": text, **metadata}, **{k: v for k, v in defaults.items() if v is not MISSING})


WEIGHT_DTYPES = ("float32", "bfloat16", "float16")  # what an export saves its weights in
LOAD_DTYPES = ("auto", *WEIGHT_DTYPES)  # what a model is loaded in for evaluation ("auto": as saved)
