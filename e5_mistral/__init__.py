"""e5-mistral: train LLM-based text embedders on synthetic data, as in Wang et al. (2024), arXiv 2401.00368."""

__version__ = "0.1.0"

from .instructions import format_query, query_prompt


__all__ = ["__version__", "format_query", "query_prompt"]
