"""RNG capture and replay for GradCache's second forward pass.

GradCache (Gao et al., 2021) embeds a large batch in chunks without a graph, takes the loss gradient with
respect to the embeddings, then re-embeds each chunk with a graph and backpropagates the cached gradient.
The re-forward must see the same dropout masks as the first pass, so each chunk's RNG state is recorded
and restored (``torch.random.fork_rng`` keeps the caller's RNG stream untouched).
"""

from __future__ import annotations

import contextlib

import torch


class RandContext:
    """The CPU and accelerator RNG states at creation time, replayable with :meth:`replay`."""

    def __init__(self, device: torch.device):
        self.devices = [device] if device.type == "cuda" else []
        self.cpu_state = torch.get_rng_state()
        self.device_states = [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextlib.contextmanager
    def replay(self):
        with torch.random.fork_rng(devices=self.devices, enabled=True):
            torch.set_rng_state(self.cpu_state)
            for device, state in zip(self.devices, self.device_states):
                torch.cuda.set_rng_state(state, device)
            yield
