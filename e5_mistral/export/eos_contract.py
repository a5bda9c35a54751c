"""Bake the training-time EOS contract into the exported tokenizer itself.

Training tokenizes with the tokenizer's default special tokens, drops a trailing EOS the tokenizer added itself,
truncates to ``max_seq_length - 1`` and appends EOS (``e5_mistral.training.collator``). Downstream users call the tokenizer with no extra argument, so the exported
``tokenizer.json`` post-processor must produce exactly those ids: ``<default prefix> $A <default suffix> <eos>``.
Under transformers >= 5 the post-processor is the only thing that adds special tokens (``add_eos_token`` in
``tokenizer_config.json`` is ignored when ``tokenizer.json`` exists), so rewriting it is what makes the contract
hold everywhere. Because the post-processor's tokens count towards ``max_length``, truncation keeps the EOS.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import E5MistralError


logger = logging.getLogger(__name__)

# A probe that tokenizes to ordinary pieces in any vocabulary; used to see which specials a tokenizer adds.
_PROBE = "probe text 42"


@dataclass(frozen=True)
class SpecialAffixes:
    """The special-token ids a tokenizer puts around a text by default (``add_special_tokens=True``)."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]


def default_affixes(tokenizer) -> SpecialAffixes:
    """Find the ids the tokenizer adds before and after a text when called with its defaults."""
    with_specials = list(tokenizer(_PROBE)["input_ids"])
    bare = list(tokenizer(_PROBE, add_special_tokens=False)["input_ids"])
    for start in range(len(with_specials) - len(bare) + 1):
        if with_specials[start : start + len(bare)] == bare:
            return SpecialAffixes(tuple(with_specials[:start]), tuple(with_specials[start + len(bare) :]))
    raise E5MistralError(
        f"cannot locate the text inside the tokenizer's default encoding ({with_specials} vs {bare}); "
        "its post-processor does more than add special tokens, which the export does not support"
    )


def contract_affixes(tokenizer, append_eos: bool = True) -> SpecialAffixes:
    """The affixes the exported tokenizer must add: the default ones, plus EOS when training appended it."""
    affixes = default_affixes(tokenizer)
    if not append_eos:
        return affixes
    eos = tokenizer.eos_token_id
    if eos is None:
        raise E5MistralError("the checkpoint's tokenizer has no eos_token, but the run appended EOS to every text")
    # The collator drops an EOS the tokenizer added itself before appending its own: exactly one EOS at the end.
    suffix = affixes.suffix[:-1] if affixes.suffix[-1:] == (eos,) else affixes.suffix
    return SpecialAffixes(affixes.prefix, suffix + (eos,))


def bake_eos_contract(tokenizer, append_eos: bool = True) -> SpecialAffixes:
    """Rewrite ``tokenizer``'s post-processor (in place) so a plain call yields the training-time ids."""
    from tokenizers import processors

    if not getattr(tokenizer, "is_fast", False) or not hasattr(tokenizer, "backend_tokenizer"):
        raise E5MistralError(f"the export needs a fast (tokenizers) tokenizer; got {type(tokenizer).__name__}")
    affixes = contract_affixes(tokenizer, append_eos)
    ids = set(affixes.prefix + affixes.suffix)
    tokens = {i: tokenizer.convert_ids_to_tokens(i) for i in ids}

    def piece(token_ids, type_id):
        return [f"{tokens[i]}:{type_id}" for i in token_ids]

    single = [*piece(affixes.prefix, 0), "$A:0", *piece(affixes.suffix, 0)]
    pair = single + [*piece(affixes.prefix, 1), "$B:1", *piece(affixes.suffix, 1)]
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(tokens[i], i) for i in sorted(ids)]
    )
    logger.info("exported tokenizer template: %s", " ".join(single))
    return affixes


def write_legacy_flags(tokenizer_dir: str | Path, tokenizer, affixes: SpecialAffixes) -> None:
    """Set ``add_bos_token``/``add_eos_token`` in ``tokenizer_config.json`` to agree with the post-processor.

    transformers >= 5 ignores them when ``tokenizer.json`` exists; transformers 4 Llama-style fast tokenizers
    rebuild the post-processor from them, so they must describe the same contract (both set explicitly).
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = affixes.prefix == (bos,) if bos is not None else False
    add_eos = affixes.suffix == (eos,) if eos is not None else False
    if affixes.prefix not in ((), (bos,)) or affixes.suffix not in ((), (eos,)):
        logger.warning(
            "special tokens %s cannot be described by add_bos_token/add_eos_token; not writing them", affixes
        )
        return
    path = Path(tokenizer_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(add_bos_token=add_bos, add_eos_token=add_eos)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
