"""``e5-mistral decontaminate DATASET --against TASK ... [--benchmarks-dir DIR] [--remove --output DIR]``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Optional, Sequence

from ..options import option


DESCRIPTION = (
    "Report training rows whose text equals a test-set text after case and whitespace normalization (paper "
    "Appendix B), optionally also sharing a long word n-gram; with --remove, write a cleaned copy in the same layout."
)


@dataclass
class DecontaminateArguments:
    against: list[str] = option("Tasks whose test sets to check against (offline folders or mteb names).")
    benchmarks_dir: Optional[str] = option("Folder of offline tasks: task X is DIR/X/.", None)
    min_words: int = option("Ignore texts with fewer words (low-entropy texts such as 'i need a coffee').", 5)
    ngram: Optional[int] = option("Also flag texts sharing an N-word sequence (e.g. 13).", None)
    include_corpus: bool = option("Also check retrieval corpora (the paper does not count shared corpora).", False)
    configs: Optional[list[str]] = option("Only these configs of a Hub-layout dataset.", None)
    remove: bool = option("Write the dataset without the flagged rows to --output.", False)
    output: Optional[str] = option("Folder for the cleaned dataset (with --remove).", None)
    overwrite: bool = option("Replace a non-empty --output folder.", False)
    report: Optional[str] = option("Also write the JSON report to this file.", None)


def main(argv: Sequence[str] | None = None, prog: str = "e5-mistral decontaminate") -> int:
    from ..cli import CommandParser, run

    parser = CommandParser([DecontaminateArguments], prog=prog, description=DESCRIPTION)
    parser.add_argument(
        "dataset", metavar="DATASET", help="Hub-layout dataset folder, JSONL/parquet file or folder, or Hub id"
    )
    args, positionals = parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)
    if args.remove and not args.output:
        parser.error("--remove needs --output DIR")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from .decontamination import decontaminate, report_table

    def _decontaminate() -> int:
        report = decontaminate(
            positionals.dataset,
            args.against,
            benchmarks_dir=args.benchmarks_dir,
            min_words=args.min_words,
            ngram=args.ngram,
            include_corpus=args.include_corpus,
            configs=args.configs,
            remove=args.remove,
            output=args.output,
            report_path=args.report,
            overwrite=args.overwrite,
        )
        print(report_table(report))
        for task, stats in report["tasks"].items():
            for example in stats["examples"]:
                print(
                    f"  {task}: {example['file']} row {example['row']} {example['field']} ({example['match']}): {json.dumps(example['text'], ensure_ascii=False)[:120]}"
                )
        if args.remove:
            print(f"removed {report['rows_removed']} row(s); cleaned dataset in {report['output']}")
        return 0

    return run(prog, _decontaminate)
