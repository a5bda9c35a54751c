"""Pooling of token states into one vector per text.

Last-token pooling is the paper's (the appended EOS); it reads the position from the attention mask, so
left- and right-padded batches give the same vector (never ``input_ids == pad_id``: pad may equal EOS).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import E5MistralError


POOLING_MODES = ("lasttoken", "mean", "cls")


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The state at the last attended position of each row, for any padding side."""
    # Index of the last 1 in each row: right padding -> len-1, left padding -> seq_len-1.
    seq_len = attention_mask.shape[1]
    positions = torch.arange(seq_len, device=attention_mask.device).expand_as(attention_mask)
    last = (positions * attention_mask.long()).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def cls_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The first attended position (not index 0, which is PAD under left padding)."""
    first = attention_mask.long().argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]


_POOLERS = {"lasttoken": last_token_pool, "mean": mean_pool, "cls": cls_pool}


def pool(
    hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "lasttoken", normalize: bool = True
) -> torch.Tensor:
    """Pool ``hidden`` (batch, seq, dim) into (batch, dim), L2-normalized unless ``normalize`` is False."""
    if mode not in _POOLERS:
        raise E5MistralError(f"unknown pooling mode {mode!r}; choose one of {', '.join(POOLING_MODES)}")
    embeddings = _POOLERS[mode](hidden, attention_mask)
    return F.normalize(embeddings, p=2, dim=-1) if normalize else embeddings


def encode(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mode: str = "lasttoken",
    normalize: bool = True,
) -> torch.Tensor:
    """Run a backbone (``AutoModel``, possibly PEFT-wrapped) and pool its last hidden states.

    This is the one encoding path of the project: the trainer's loss and the export's round-trip test use it.
    """
    outputs = model(input_ids=input_ids, attention_mask=attention_mask)
    hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
    return pool(hidden, attention_mask, mode=mode, normalize=normalize)


def ensure_pad_token(tokenizer) -> None:
    """The one pad-token rule of training and export: a tokenizer without a pad token gets UNK when it exists and
    differs from EOS, else EOS. Padding is masked everywhere (never derived from ids), so either is safe."""
    if tokenizer.pad_token_id is not None:
        return
    if tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
        tokenizer.pad_token = tokenizer.unk_token
    elif tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    else:
        raise E5MistralError("the tokenizer has neither a pad, unk nor eos token; set one before training")
