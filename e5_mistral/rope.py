"""The RoPE base override (paper §5.2): raising the base (10^4 -> 10^5) stretches the positions a model tells apart,
which extends its context with no long-context training."""

from __future__ import annotations

from .errors import E5MistralError


def rope_parameters(config, theta: float, where: str) -> dict:
    """``config``'s RoPE parameters with the base set to ``theta`` (its scaling type and the rest kept)."""
    params = getattr(config, "rope_parameters", None)
    if not params or "rope_theta" not in params:
        raise E5MistralError(f"--rope-theta: {where} has no rotary position embedding to change")
    if theta <= 0:
        raise E5MistralError(f"--rope-theta must be positive, got {theta}")
    return {**params, "rope_theta": float(theta)}


def rope_config_kwargs(model: str, theta: float | None) -> dict:
    """``from_pretrained`` config arguments that load ``model`` with RoPE base ``theta`` ({} for None)."""
    if theta is None:
        return {}
    from transformers import AutoConfig

    return {"rope_parameters": rope_parameters(AutoConfig.from_pretrained(model), theta, model)}
