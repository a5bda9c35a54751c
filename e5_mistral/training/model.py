"""Load the tokenizer and the backbone (``AutoModel``), optionally wrapped in the paper's LoRA adapter."""

from __future__ import annotations

import logging
import re

from ..errors import E5MistralError
from ..pooling import ensure_pad_token
from ..rope import rope_config_kwargs
from .e5_config import E5TrainingConfig, ModelArguments


logger = logging.getLogger(__name__)


def load_tokenizer(model_args: ModelArguments):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path or model_args.model_name_or_path)
    ensure_pad_token(tokenizer)
    return tokenizer


def lora_config(args: E5TrainingConfig):
    from peft import LoraConfig, TaskType

    targets = list(args.lora_target_modules)
    if args.lora_layers_to_transform:
        # A full-match regex: peft's own layers_to_transform expects a prefix before "layers." that a bare
        # AutoModel backbone does not have.
        layers = "|".join(str(int(i)) for i in args.lora_layers_to_transform)
        targets = rf"(.*\.)?layers\.({layers})\..*\.({'|'.join(map(re.escape, targets))})"
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        bias="none",
        target_modules=targets,
        task_type=TaskType.FEATURE_EXTRACTION,
    )


def load_backbone(model_args: ModelArguments, args: E5TrainingConfig, tokenizer=None):
    """``AutoModel`` (no LM head), in the requested dtype, wrapped with LoRA when ``args.use_lora``."""
    import torch
    from transformers import AutoModel

    if not model_args.model_name_or_path:
        raise E5MistralError("model_name_or_path is not set (in the YAML or with --model_name_or_path)")
    dtype = model_args.dtype if model_args.dtype == "auto" else getattr(torch, model_args.dtype, None)
    if dtype is None:
        raise E5MistralError(f"dtype must be auto, bfloat16, float16 or float32, got {model_args.dtype!r}")
    kwargs = {"dtype": dtype}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    kwargs.update(rope_config_kwargs(model_args.model_name_or_path, model_args.rope_theta))
    model = AutoModel.from_pretrained(model_args.model_name_or_path, **kwargs)
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # no KV cache in training; also required by activation checkpointing
    if tokenizer is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if args.use_lora:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(args))
        trainable, total = model.get_nb_trainable_parameters()
        logger.info("LoRA: %d trainable of %d parameters", trainable, total)
    return model
