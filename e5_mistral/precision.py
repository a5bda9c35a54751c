"""What a CPU computes fast: which floating-point format, on how many cores.

bf16 halves memory traffic, and on a CPU with bf16 units (AVX512-BF16 or AMX) its matrix products ran 1.6x the
texts a second of float32 on 2 cores. Without them torch emulates bf16: a 512x512 product ran about 50x slower
than in float32 on a 2-core AVX2 CPU. The CPU commands therefore use bf16 only where the hardware has it.
"""

from __future__ import annotations

import functools
import os


BF16_UNITS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_bf16() -> bool:
    import torch

    capabilities = torch.cpu.get_capabilities()
    return any(capabilities.get(unit) for unit in BF16_UNITS)


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_dtype(preferred: str) -> str:
    """``preferred``, unless it is bfloat16 and this CPU has no bf16 units: then float32."""
    return "float32" if preferred == "bfloat16" and not cpu_has_bf16() else preferred


def fit_recipe_to_cpu(config: dict) -> dict:
    """A training recipe for this CPU: its bf16 autocast switched off where bf16 is emulated. Says so when it is."""
    if config.get("bf16") and not cpu_has_bf16():
        print(
            "[precision] this CPU has no bf16 units (AVX512-BF16 or AMX): training and scoring in float32", flush=True
        )
        config = {**config, "bf16": False}
    return config
