"""Training: parse one YAML (+ CLI overrides), build the data, model and trainer, train.

The body of ``recipes/train.py``, of ``e5-mistral train CONFIG.yaml``, and of
``accelerate launch -m e5_mistral.training.run CONFIG.yaml`` (the same, without a checkout).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

from ..compat import save_model_without_push
from ..errors import E5MistralError, MissingFileError
from .e5_config import DataArguments, E5TrainingConfig, ModelArguments


logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None):
    """``CONFIG.yaml [--flag value ...]`` -> (ModelArguments, DataArguments, E5TrainingConfig).

    YAML keys are the dataclass field names; flags on the command line override them (TRL's ``TrlParser``).
    Unknown keys are an error.
    """
    from trl import TrlParser

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        check_config_file(argv[0])
        argv = ["--config", argv[0], *argv[1:]]
    parser = TrlParser((ModelArguments, DataArguments, E5TrainingConfig))
    model_args, data_args, training_args = parser.parse_args_and_config(argv)
    check_model_path(model_args.model_name_or_path, argv[1] if argv[:1] == ["--config"] else "the command line")
    return model_args, data_args, training_args


def check_config_file(path: str) -> None:
    """One line naming the file and the key for what TRL's parser would turn into a traceback."""
    import yaml

    if not os.path.isfile(path):
        raise MissingFileError(f"config file {path} does not exist")
    try:
        config = yaml.safe_load(open(path, encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise E5MistralError(f"{path} is not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    if not isinstance(config, dict):
        raise E5MistralError(f"{path} must be a YAML mapping of settings, not a {type(config).__name__}")
    known = {f for cls in (ModelArguments, DataArguments, E5TrainingConfig) for f in cls.__dataclass_fields__}
    unknown = sorted(set(config) - known)
    if unknown:
        raise E5MistralError(f"{path}: unknown key(s) {', '.join(unknown)}")


def check_model_path(name_or_path: str | None, where: str) -> None:
    """A missing model is one line, not transformers' repo-id traceback."""
    if not name_or_path:
        raise E5MistralError(f"{where}: model_name_or_path is required")
    looks_local = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
    if looks_local and not os.path.exists(os.path.expanduser(name_or_path)):
        raise MissingFileError(f"{where}: model_name_or_path {name_or_path} does not exist")


def train(model_args: ModelArguments, data_args: DataArguments, training_args: E5TrainingConfig):
    """Train and save; returns the trainer (its ``state`` holds the log history)."""
    import torch
    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from ..precision import cpu_cores, cpu_has_bf16
    from ..versions import check_versions
    from .data import build_mixture
    from .e5_trainer import E5Trainer
    from .model import load_backbone, load_tokenizer

    check_versions()  # before any minute is spent: an unpinned install can break at the first adapter call
    if training_args.bf16 and training_args.device.type == "cpu" and not cpu_has_bf16():
        logger.warning("bf16 on a CPU without bf16 units is emulated, many times slower than float32: set bf16 false")
    threads, cores = torch.get_num_threads(), cpu_cores()
    if training_args.device.type == "cpu" and training_args.world_size == 1 and threads < cores:
        logger.warning(
            f"training on {threads} of {cores} CPU cores (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
            f"accelerate launch sets 1 without --cpu): pass --num_cpu_threads_per_process {cores}"
        )
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args)
    # Validate every row on the main process first; the others then read the datasets cache.
    with training_args.main_process_first(desc="dataset preparation"):
        dataset, infos = build_mixture(
            data_args.dataset_mixture,
            num_hard_negatives=training_args.num_hard_negatives,
            seed=training_args.data_seed if training_args.data_seed is not None else training_args.seed,
            num_proc=data_args.dataset_num_proc,
            refresh_local=training_args.local_process_index == 0,
        )
    eval_dataset = None
    if data_args.eval_fraction:
        split = dataset.train_test_split(test_size=data_args.eval_fraction, seed=training_args.seed)
        dataset, eval_dataset = split["train"], split["test"]
    model = load_backbone(model_args, training_args, tokenizer)
    trainer = E5Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        dataset_infos=infos,
        base_model_name_or_path=model_args.model_name_or_path,
        rope_theta=model_args.rope_theta,
    )
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint in ("latest", "last", True, "True", "true"):
        checkpoint = get_last_checkpoint(training_args.output_dir)
        if checkpoint is None:
            logger.info("no checkpoint in %s: starting from scratch", training_args.output_dir)
    trainer.train(resume_from_checkpoint=checkpoint)
    save_model_without_push(trainer, training_args.output_dir)
    if trainer.args.push_to_hub:
        trainer.push_to_hub(
            dataset=[i.path for i in infos],
            finetuned_from=model_args.model_name_or_path,
            tags=["e5-mistral", "sentence-embeddings"],
        )
    return trainer


def main(argv: Sequence[str] | None = None, prog: str = "recipes/train.py") -> int:
    from ..cli import run

    def parse_and_train():
        model_args, data_args, training_args = parse_args(argv)
        # INFO on the process that logs (the main one), WARNING on the others: N ranks do not print N copies
        logging.basicConfig(
            level=logging.INFO if training_args.should_log else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        return train(model_args, data_args, training_args) and 0

    return run(prog, parse_and_train)


if __name__ == "__main__":
    raise SystemExit(main())
