"""Read a training checkpoint (PEFT adapter or full model, or a ``checkpoint-N`` folder) and load its backbone.

The layout is the training stage's ``Trainer.save_model`` output plus ``e5_mistral_config.json``; every key of
that file is optional here, with the paper's defaults.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import E5MistralError, MissingFileError
from ..run_metadata import RUN_METADATA_FILE, RunMetadata


logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
MODEL_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class Checkpoint:
    """A resolved checkpoint folder: where the weights, tokenizer and run config are."""

    path: Path
    is_adapter: bool
    run_config: RunMetadata
    metadata_path: Path | None
    tokenizer_path: Path | None  # None: no tokenizer files anywhere (reported when the tokenizer is loaded)
    base_model: str | None  # the base of an adapter (None for a full model)


def _has_any(folder: Path, names) -> bool:
    return any((folder / name).is_file() for name in names)


def _latest_checkpoint(folder: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(folder))
    return Path(last) if last else None


def resolve_checkpoint(path: str | Path) -> Checkpoint:
    """Locate weights, tokenizer and ``e5_mistral_config.json`` for ``path`` (a run folder or ``checkpoint-N``)."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise MissingFileError(f"checkpoint path {folder} does not exist")
    if not folder.is_dir():
        raise E5MistralError(f"checkpoint path {folder} is not a directory")
    is_adapter = (folder / ADAPTER_CONFIG).is_file()
    if not is_adapter and not (folder / "config.json").is_file():
        latest = _latest_checkpoint(folder)
        if latest is None:
            raise MissingFileError(
                f"{folder} holds neither a PEFT adapter ({ADAPTER_CONFIG}) nor a model (config.json), "
                "nor any checkpoint-N folder"
            )
        logger.info("%s has no final model; exporting its latest checkpoint %s", folder, latest.name)
        return resolve_checkpoint(latest)
    if is_adapter and not _has_any(folder, ADAPTER_FILES):
        raise MissingFileError(f"{folder} has {ADAPTER_CONFIG} but no adapter weights ({' or '.join(ADAPTER_FILES)})")
    if not is_adapter and not _has_any(folder, MODEL_FILES):
        raise MissingFileError(f"{folder} has config.json but no model weights ({', '.join(MODEL_FILES)})")

    # A Trainer checkpoint-N folder may lack the run config and tokenizer; the run folder above it has them.
    search = [folder, folder.parent] if folder.name.startswith("checkpoint-") else [folder]
    metadata_path = next((d / RUN_METADATA_FILE for d in search if (d / RUN_METADATA_FILE).is_file()), None)
    if metadata_path is None:
        logger.warning(
            "no %s next to %s; using the defaults (lasttoken pooling, EOS appended, 512 tokens)",
            RUN_METADATA_FILE,
            folder,
        )
    run_config = RunMetadata.from_file(metadata_path)

    base_model = None
    if is_adapter:
        adapter_config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        base_model = adapter_config.get("base_model_name_or_path") or run_config.base_model_name_or_path
        if not base_model:
            raise E5MistralError(f"{folder / ADAPTER_CONFIG} does not name its base model (base_model_name_or_path)")
    tokenizer_path = next((d for d in search if _has_any(d, TOKENIZER_FILES)), None)
    fallback = base_model or run_config.base_model_name_or_path
    if tokenizer_path is None and fallback:
        logger.warning("no tokenizer in %s; using the base model's (%s)", folder, fallback)
        tokenizer_path = Path(fallback)
    return Checkpoint(folder, is_adapter, run_config, metadata_path, tokenizer_path, base_model)


def _check_architecture(config, where: str) -> None:
    from transformers import MODEL_MAPPING

    architecture = ", ".join(config.architectures or []) or config.model_type
    if getattr(config, "is_encoder_decoder", False):
        raise E5MistralError(
            f"unsupported architecture {architecture} in {where}: encoder-decoder models cannot be exported as a "
            "last-token embedder (use a decoder-only backbone such as Mistral, Llama or Qwen)"
        )
    if type(config) not in MODEL_MAPPING:
        raise E5MistralError(
            f"unsupported architecture {architecture} in {where}: transformers' AutoModel cannot load it"
        )


def load_config(name_or_path: str | Path, where: str):
    """``AutoConfig`` with errors that name the architecture and the file."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(name_or_path))
    except (ValueError, KeyError) as err:
        raw = {}
        config_file = Path(name_or_path) / "config.json"
        if config_file.is_file():
            raw = json.loads(config_file.read_text(encoding="utf-8"))
        architecture = ", ".join(raw.get("architectures") or []) or raw.get("model_type") or "unknown"
        raise E5MistralError(
            f"unsupported architecture {architecture} in {where}: {' '.join(str(err).split())[:300]}"
        ) from err
    except OSError as err:
        raise MissingFileError(
            f"cannot load the model config from {name_or_path} ({where}): {' '.join(str(err).split())[:300]}"
        ) from err
    _check_architecture(config, where)
    return config


def check_architecture(checkpoint: Checkpoint) -> None:
    """Fail early, before any weights are read, when the backbone cannot be exported."""
    if checkpoint.is_adapter:
        load_config(checkpoint.base_model, f"the base model {checkpoint.base_model} of {checkpoint.path}")
    else:
        load_config(checkpoint.path, str(checkpoint.path / "config.json"))


def load_merged_backbone(checkpoint: Checkpoint, interpolate: float = 1.0):
    """The backbone as an fp32 ``AutoModel`` in eval mode, with any LoRA adapter merged into its weights; with
    ``interpolate`` below 1, the weights ``base + interpolate * (trained - base)`` (WiSE-FT, LM-Cocktail: a share
    of the fine-tuning, to trade the gain in its domain against what the starting model did elsewhere)."""
    import torch
    from transformers import AutoModel

    model = _merged(checkpoint)
    if interpolate != 1.0:
        base_path = checkpoint.base_model or checkpoint.run_config.base_model_name_or_path
        if not base_path:
            raise E5MistralError(f"--interpolate: {checkpoint.path} does not name the model it was trained from")
        base = AutoModel.from_pretrained(str(base_path), config=model.config, dtype=torch.float32).state_dict()
        with torch.no_grad():
            for name, weight in model.state_dict().items():
                if name in base and weight.is_floating_point():
                    weight.copy_(base[name] + interpolate * (weight - base[name]))
    model.eval()
    return model


def _merged(checkpoint: Checkpoint):
    import torch
    from transformers import AutoModel

    if checkpoint.is_adapter:
        from peft import PeftModel

        where = f"the base model {checkpoint.base_model} of {checkpoint.path}"
        config = load_config(checkpoint.base_model, where)
        base = AutoModel.from_pretrained(checkpoint.base_model, config=config, dtype=torch.float32)
        try:
            peft_model = PeftModel.from_pretrained(base, str(checkpoint.path))
        except (ValueError, KeyError, RuntimeError) as err:
            raise E5MistralError(
                f"cannot apply the adapter in {checkpoint.path} to {checkpoint.base_model}: {' '.join(str(err).split())[:300]}"
            ) from err
        model = peft_model.merge_and_unload()
    else:
        config = load_config(checkpoint.path, str(checkpoint.path / "config.json"))
        model = AutoModel.from_pretrained(str(checkpoint.path), config=config, dtype=torch.float32)
    return model
