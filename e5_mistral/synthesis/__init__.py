"""Stage: synthesis. Turn an LLM behind any OpenAI-compatible endpoint into the paper's synthetic training data.

Heavy modules (datasets, openai) load only when their names are used, so the CLI's ``--help`` stays fast.
"""

from __future__ import annotations

import importlib


_EXPORTS = {
    "SynthesisArguments": ".config",
    "generate": ".runner",
    "SynthesisRun": ".runner",
    "SyntheticEmbeddingData": ".builder",
    "SyntheticEmbeddingDataConfig": ".builder",
    "OnlineBackend": ".online",
    "write_hub_folder": ".dataset",
    "push_to_hub": ".dataset",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
