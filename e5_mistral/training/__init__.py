"""Training stage: contrastive fine-tuning of a decoder LLM into an embedder (paper §3.2, §4.2).

Entry point: ``accelerate launch recipes/train.py recipes/<model>/<setting>.yaml``.
"""

import importlib


# Imported on first use, so that importing one submodule does not pull in transformers.Trainer.
_EXPORTS = {
    "E5DataCollator": ".collator",
    "DataArguments": ".e5_config",
    "E5DatasetConfig": ".e5_config",
    "E5TrainingConfig": ".e5_config",
    "ModelArguments": ".e5_config",
    "E5Trainer": ".e5_trainer",
    "info_nce_loss": ".loss",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
