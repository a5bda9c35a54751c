"""The ``e5-mistral`` console command.

Each subcommand lives with its stage (``e5_mistral/<stage>/cli.py`` exposes ``main(argv, prog)``) and is
imported only when run, so ``e5-mistral --help`` stays fast. ``e5-mistral train CONFIG.yaml`` trains in one process;
on several devices it is ``accelerate launch -m e5_mistral.training.run CONFIG.yaml`` (or ``recipes/train.py`` in a
checkout), as with TRL and the alignment-handbook.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

from transformers import HfArgumentParser

from .compat import DefaultOnceHelpFormatter, move_to_group
from .errors import E5MistralError


COMMANDS: dict[str, tuple[str, str]] = {
    "generate": (
        "e5_mistral.synthesis.cli",
        "synthesize training data with an LLM behind any OpenAI-compatible endpoint",
    ),
    "adapt": (
        "e5_mistral.adaptation.cli",
        "generate retrieval training data from your own documents (queries, relabelled positives, hard negatives)",
    ),
    "mine": ("e5_mistral.mining.cli", "add hard negatives mined with an embedder to a dataset"),
    "filter": (
        "e5_mistral.mining.consistency",
        "drop generated pairs whose positive a teacher embedder does not rank in its top k",
    ),
    "merge": ("e5_mistral.training.merge", "merge LoRA checkpoints of one base model into one checkpoint"),
    "train": (
        "e5_mistral.training.run",
        "train an embedder from a YAML recipe (multi-GPU: accelerate launch -m e5_mistral.training.run)",
    ),
    "export": ("e5_mistral.export.cli", "turn a training checkpoint into a sentence-transformers model (and push it)"),
    "evaluate": ("e5_mistral.evaluation.cli", "evaluate one or more models with mteb and the paper's instructions"),
    "passkey": (
        "e5_mistral.evaluation.passkey",
        "write personalized passkey retrieval tasks (the paper's long-context test)",
    ),
    "decontaminate": (
        "e5_mistral.evaluation.decontamination_cli",
        "find (and remove) training rows that match test sets",
    ),
    "quickstart": ("e5_mistral.quickstart", "run the whole pipeline offline on SmolLM2-135M-Instruct"),
    "quickstart-adapt": (
        "e5_mistral.adaptation.quickstart",
        "adapt all-MiniLM-L6-v2 (and SmolLM2) to a corpus offline, scored on its test queries before and after",
    ),
}

# Errors that are the user's to fix are printed as one line, never as a traceback (set E5_MISTRAL_DEBUG=1 for one);
# every other exception (CUDA out of memory, NCCL, a library, a bug) keeps its traceback.


class CommandParser(HfArgumentParser):
    """``HfArgumentParser`` whose usage errors are one clear line and exit code 2, whose ``--help`` lists the
    options in the groups of each dataclass's ``HELP_GROUPS`` and shows a default once."""

    def __init__(self, dataclass_types, **kwargs):
        super().__init__(dataclass_types, formatter_class=DefaultOnceHelpFormatter, **kwargs)
        by_dest = {action.dest: action for action in self._actions}
        for dtype in dataclass_types:
            for title, names in getattr(dtype, "HELP_GROUPS", {}).items():
                group = self.add_argument_group(title)
                for name in names:
                    move_to_group(self, by_dest[name], group)

    def error(self, message: str):  # noqa: D401 - argparse hook
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)

    def parse_args_into_dataclasses(self, args=None, **kwargs):
        # HfArgumentParser raises ValueError for unknown flags; make them the same usage error as argparse's own.
        if kwargs.get("return_remaining_strings"):
            return super().parse_args_into_dataclasses(args=args, **kwargs)
        *parsed, remaining = super().parse_args_into_dataclasses(args=args, return_remaining_strings=True, **kwargs)
        if remaining:
            self.error(f"unrecognized arguments: {' '.join(remaining)}")
        return tuple(parsed)

    def parse_with_dataset(self, argv: Sequence[str] | None, verb: str, field: str = "dataset") -> tuple:
        """Parse a command whose first dataclass has ``field`` (the input), given once: as the first argument or as
        ``--FIELD``."""
        metavar = field.upper()
        self.add_argument("source", nargs="?", metavar=metavar, help=f"the {field} to {verb} (or --{field})")
        *parsed, positionals = self.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)
        if (getattr(parsed[0], field) is None) == (positionals.source is None):
            raise E5MistralError(f"give the {field} to {verb} once: as {metavar} or as --{field}")
        setattr(parsed[0], field, getattr(parsed[0], field) or positionals.source)
        return tuple(parsed)


HTTP_CLIENT_LOGGERS = ("httpx", "httpx2")  # the openai client's HTTP library: httpx, or httpx2 as openai 3 installs it


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a line is logged: a command run inside another
    program (a test, a notebook) may see stderr replaced, and closed, after it set logging up."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def log_lines(prog: str, level: int = logging.INFO) -> None:
    """Log ``prog: message`` lines to stderr, without the HTTP client's line per request of an LLM endpoint."""
    logging.basicConfig(level=level, format=f"{prog}: %(message)s", handlers=[_StderrHandler()])
    for name in HTTP_CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def fail(prog: str, err: BaseException, code: int = 1) -> int:
    """Print ``prog: error: <message>`` on one line and return ``code``."""
    message = " ".join(str(err).split()) or type(err).__name__
    sys.stderr.write(f"{prog}: error: {message}\n")
    return code


def run(prog: str, func, *args, **kwargs) -> int:
    """Call ``func``; turn user errors into one line on stderr and a non-zero exit code."""
    try:
        result = func(*args, **kwargs)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted; everything finished so far is kept on disk\n")
        return 130
    except E5MistralError as err:
        if os.environ.get("E5_MISTRAL_DEBUG"):
            raise
        return fail(prog, err)
    return int(result or 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="e5-mistral",
        description="Train LLM-based text embedders on synthetic data (Wang et al., 2024, arXiv 2401.00368). "
        "Multi-GPU training: accelerate launch -m e5_mistral.training.run CONFIG.yaml",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"e5-mistral {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    return module.main(rest, prog=f"e5-mistral {args.command}")


if __name__ == "__main__":
    raise SystemExit(main())
