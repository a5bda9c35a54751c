"""Export stage: a training checkpoint -> a sentence-transformers folder (and a Hub upload).

``export_checkpoint(ExportArguments(...))`` is the library entry point; ``e5-mistral export`` the command.
"""

from .exporter import ExportArguments, build_prompts, export_checkpoint


__all__ = ["ExportArguments", "build_prompts", "export_checkpoint"]
