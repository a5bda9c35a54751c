"""Checks that the installed libraries can work together, where their own metadata does not say so.

transformers' PEFT integration (``model.add_adapter``, loading adapters) demands a minimum peft version that
transformers does not declare as a requirement: transformers 5.24 asks for peft >= 0.22, which was never released,
so a fresh unpinned install breaks at the first adapter call. ``constraints.txt`` holds the set CI last passed with.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

from .errors import E5MistralError


CONSTRAINTS_HINT = "install the versions CI tested: pip install -c constraints.txt -e . (see the README)"


def incompatibilities() -> list[str]:
    """What the installed set lacks, one sentence each (empty when it works together)."""
    problems = []
    try:
        from transformers.integrations.peft import MIN_PEFT_VERSION
    except ImportError:  # an older transformers without the constant
        return problems
    try:
        installed = version("peft")
    except PackageNotFoundError:
        return [f"peft is not installed (transformers {version('transformers')} needs peft >= {MIN_PEFT_VERSION})"]
    if Version(installed) < Version(MIN_PEFT_VERSION):
        problems.append(
            f"transformers {version('transformers')} needs peft >= {MIN_PEFT_VERSION}, but peft {installed} "
            "is installed"
        )
    return problems


def check_versions() -> None:
    """Raise :class:`E5MistralError` naming each incompatibility and how to fix it."""
    problems = incompatibilities()
    if problems:
        raise E5MistralError("; ".join(problems) + f": {CONSTRAINTS_HINT}")
