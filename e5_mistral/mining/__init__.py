"""Hard-negative mining: between synthesis and training (``e5-mistral mine``)."""

from .hard_negatives import MiningArguments, mine


__all__ = ["MiningArguments", "mine"]
