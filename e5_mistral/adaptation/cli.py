"""``e5-mistral adapt``: generate retrieval training data from a corpus (see :mod:`.run`)."""

from __future__ import annotations

import logging
from typing import Sequence


DESCRIPTION = (
    "Generate retrieval training data from your own documents: an LLM writes a task and a query per passage, a "
    "teacher's neighbours and an LLM judge pick the positive and a hard negative. Rerunning resumes."
)


def main(argv: Sequence[str] | None = None, prog: str = "e5-mistral adapt") -> int:
    from ..cli import CommandParser, fail, log_lines, run
    from ..errors import E5MistralError
    from ..mining.judge import JudgeArguments
    from .run import AdaptArguments, adapt

    parser = CommandParser([AdaptArguments, JudgeArguments], prog=prog, description=DESCRIPTION)
    try:
        args, judge = parser.parse_with_dataset(argv, "adapt", field="corpus")
    except E5MistralError as err:
        return fail(prog, err, code=2)
    log_lines(prog, logging.INFO if not args.no_progress else logging.WARNING)

    def _adapt() -> int:
        report = adapt(args, judge)["adaptation"]
        decisions = report["relabel"]["decisions"]
        print(
            f"{report['accepted_queries']} of {report['queries']['planned']} queries accepted "
            f"(rejected: {report['rejected'] or 'none'}); positives: {decisions}; "
            f"{report['relabel']['with_negative']} rows with a hard negative"
        )
        print(
            f"{report['rows']} rows in {args.output}/dataset (load_dataset({args.output + '/dataset'!r}, 'short_long'))"
        )
        return 0

    return run(prog, _adapt)
