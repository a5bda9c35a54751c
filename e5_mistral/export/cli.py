"""``e5-mistral export CHECKPOINT_DIR OUTPUT_DIR [options]``."""

from __future__ import annotations

import logging
from typing import Sequence

from .exporter import ExportArguments


DESCRIPTION = (
    "Turn a training checkpoint (LoRA adapter or full model) into a sentence-transformers folder: merged weights, "
    "Transformer -> Pooling -> Normalize, a tokenizer that appends EOS itself, query prompts and a model card; "
    "optionally upload it to the Hugging Face Hub."
)


def main(argv: Sequence[str] | None = None, prog: str = "e5-mistral export") -> int:
    from ..cli import CommandParser, fail, run
    from ..errors import E5MistralError

    parser = CommandParser([ExportArguments], prog=prog, description=DESCRIPTION)
    # The two folders are positional, as users type them; --checkpoint_dir/--output_dir work too.
    parser.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT_DIR", help="same as --checkpoint_dir")
    parser.add_argument("output", nargs="?", metavar="OUTPUT_DIR", help="same as --output_dir")
    try:
        args, positionals = parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)
    except E5MistralError as err:  # raised by ExportArguments.__post_init__
        return fail(prog, err, code=2)
    args.checkpoint_dir = args.checkpoint_dir or positionals.checkpoint
    args.output_dir = args.output_dir or positionals.output
    if not args.checkpoint_dir or not args.output_dir:
        parser.error("CHECKPOINT_DIR and OUTPUT_DIR are required")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from .exporter import export_checkpoint

    def _export() -> int:
        output = export_checkpoint(args)
        print(output)
        return 0

    return run(prog, _export)
