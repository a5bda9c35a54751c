"""Files the package needs that live at the top of the repository: the quickstart's recipe and the card template.

A wheel carries copies under ``e5_mistral/resources/`` (``setup.py`` puts them there when it builds the package,
so the repository keeps one copy of each); an editable checkout reads them from the repository itself.
"""

from __future__ import annotations

from pathlib import Path

from .errors import MissingFileError


BUNDLED = Path(__file__).resolve().parent / "resources"
REPO_ROOT = Path(__file__).resolve().parents[1]
# What a wheel carries (paths relative to the repository root); setup.py reads this list.
BUNDLED_FILES = (
    "model_card_template.md",
    "recipes/smollm2-135m/cpu.yaml",
    "recipes/smollm2-135m/adapt.yaml",
    "recipes/all-minilm-l6-v2/adapt.yaml",
    "recipes/accelerate_configs/ddp.yaml",
    "recipes/accelerate_configs/deepspeed_zero3.yaml",
    "recipes/accelerate_configs/fsdp.yaml",
)


def resource(relative: str) -> Path:
    """The bundled copy of ``relative`` (a path of :data:`BUNDLED_FILES`), else the repository's file."""
    for base in (BUNDLED, REPO_ROOT):
        if (base / relative).is_file():
            return base / relative
    raise MissingFileError(
        f"{relative} is neither bundled with the package ({BUNDLED}) nor in a checkout ({REPO_ROOT})"
    )
