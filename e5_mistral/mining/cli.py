"""``e5-mistral mine``: add hard negatives mined with an embedder to a dataset, for training."""

from __future__ import annotations

import logging
from typing import Sequence


DESCRIPTION = (
    "Mine hard negatives with a sentence-transformers teacher (sentence_transformers.util.mine_hard_negatives) for "
    "a synthesis output, a Hub dataset, a local Hub-layout folder or a JSON Lines file. Rerunning resumes."
)


def main(argv: Sequence[str] | None = None, prog: str = "e5-mistral mine") -> int:
    from ..cli import CommandParser, fail, log_lines, run
    from ..errors import E5MistralError
    from .hard_negatives import MiningArguments, mine
    from .judge import JudgeArguments

    parser = CommandParser([MiningArguments, JudgeArguments], prog=prog, description=DESCRIPTION)
    try:
        args, judge = parser.parse_with_dataset(argv, "mine")
    except E5MistralError as err:  # also raised by MiningArguments.__post_init__
        return fail(prog, err, code=2)
    log_lines(prog, logging.INFO if not args.no_progress else logging.WARNING)

    def _mine() -> int:
        report = mine(args, judge)
        for config, counts in report["configs"].items():
            if "mined_negatives" in counts:
                print(
                    f"{config}: {counts['rows']} rows, {counts['mined_negatives']} negatives mined, "
                    f"{counts['rows_with_fewer']} rows with fewer than {args.num_negatives}, "
                    f"{counts['rows_without']} without"
                )
            if counts.get("judge"):
                verdicts = counts["judge"]
                print(
                    f"{config}: the judge dropped {verdicts['dropped']} of {verdicts['candidates']} mined negatives "
                    f"as relevant ({verdicts['unjudged']} unjudged; {verdicts['requests_sent']} requests, "
                    f"{verdicts['prompt_tokens'] + verdicts['completion_tokens']} tokens, "
                    f"~${verdicts['estimated_cost_usd']:.4f})"
                )
        print(f"mined dataset in {args.output} (load_dataset({args.output!r}, CONFIG))")
        return 0

    return run(prog, _mine)
