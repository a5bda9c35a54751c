"""Run by ``accelerate launch`` in tests/test_training_distributed.py: each process writes which batch groups and
families its local batches hold, step by step, as its prepared train dataloader hands them out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from e5_mistral.training.data import build_mixture
from e5_mistral.training.e5_trainer import E5Trainer
from e5_mistral.training.model import load_backbone, load_tokenizer
from e5_mistral.training.run import parse_args


def main(config: str, out: str) -> None:
    model_args, data_args, args = parse_args([config])
    tokenizer = load_tokenizer(model_args)
    dataset, infos = build_mixture(data_args.dataset_mixture, num_hard_negatives=args.num_hard_negatives)
    family_of = {}
    for row in (json.loads(line) for line in open(Path(data_args.dataset_mixture[0].path) / "all" / "train.jsonl")):
        family_of[row["task"]] = row["family"]
    model = load_backbone(model_args, args, tokenizer)
    trainer = E5Trainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, dataset_infos=infos)
    seen = []
    collate = trainer.data_collator

    def recording(rows):
        tasks = [row["query"].split("\n")[0].removeprefix("Instruct: ") for row in rows]
        seen.append(
            {"groups": sorted({row["batch_group"] for row in rows}), "families": [family_of[t] for t in tasks]}
        )
        return collate(rows)

    trainer.data_collator = recording
    for _ in trainer.get_train_dataloader():
        pass
    Path(out).with_suffix(f".rank{trainer.args.process_index}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(*sys.argv[1:])
