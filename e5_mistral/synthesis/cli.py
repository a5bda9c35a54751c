"""``e5-mistral generate``: synthesize the paper's training data with any OpenAI-compatible endpoint."""

from __future__ import annotations

import logging
import sys
from typing import Sequence


DESCRIPTION = (
    "Generate synthetic embedding training data as in Wang et al. (2024): brainstorm tasks, then one JSON "
    "example per (task, sampled slots). Rerunning the same command resumes from OUTPUT/journal."
)


def _generate(args) -> int:
    from ..errors import E5MistralError
    from ..hub.writer import push_to_hub
    from .runner import SynthesisRun

    run = SynthesisRun(args)
    print(run.estimate().describe(), flush=True)  # before any paid request
    if args.dry_run:
        return 0
    result = run.run()
    report = result.report
    print(
        f"{report['accepted']} accepted, {sum(report['rejected'].values())} rejected, "
        f"{report['duplicates_removed']} duplicates, {report['failed']} failed of {report['planned']} planned; "
        f"{report['prompt_tokens'] + report['completion_tokens']} tokens, ~${report['estimated_cost_usd']:.4f}; "
        f"dataset in {result.output / 'dataset'}"
    )
    orphaned = report["orphaned"]
    if orphaned["answers"]:
        print(
            f"{orphaned['answers']} earlier answers ({orphaned['prompt_tokens'] + orphaned['completion_tokens']} "
            f"tokens, ~${orphaned['estimated_cost_usd']:.4f}) belong to no example of this plan: the sizing or dedup "
            "options changed since they were paid for (report.json: orphaned)",
            file=sys.stderr,
        )
    if report["budget_stopped"]:
        print(
            "budget reached: rerun the same command (with a larger --max-cost/--max-total-tokens) to resume",
            file=sys.stderr,
        )
    refused = report["failed_reasons"].get("refused", 0)
    if refused:
        print(
            f"{refused} examples were refused by the endpoint (a 4xx about the request; report.json: failed_reasons): "
            "a rerun does not send them again; fix the cause, then rerun with --retry-refused",
            file=sys.stderr,
        )
    if report["failed"] - refused and not report["budget_stopped"]:
        print(
            f"{report['failed'] - refused} examples are not finished: rerun the same command to retry them",
            file=sys.stderr,
        )
    if args.push_to_hub:
        unfinished = report["budget_stopped"] or report["failed"]
        if unfinished and not args.push_partial:
            raise E5MistralError(
                f"not pushed to {args.push_to_hub}: the dataset is unfinished ({report['failed']} examples failed"
                + (", stopped by the budget" if report["budget_stopped"] else "")
                + "); rerun to finish it, or pass --push-partial to push it as it is"
            )
        url = push_to_hub(result.output / "dataset", args.push_to_hub, private=args.private)
        print(f"pushed to {url}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "e5-mistral generate") -> int:
    from ..cli import CommandParser, fail, log_lines, run
    from ..errors import E5MistralError
    from .config import SynthesisArguments

    parser = CommandParser([SynthesisArguments], prog=prog, description=DESCRIPTION)
    try:
        (args,) = parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)
        args.check_runnable()
    except E5MistralError as err:  # a bad flag: the same exit code as argparse's own usage errors
        return fail(prog, err, code=2)
    log_lines(prog, logging.WARNING)
    return run(prog, _generate, args)


if __name__ == "__main__":
    raise SystemExit(main())
