"""``recipes/accelerate_configs/fsdp.yaml`` launched on CPU: two gloo processes train the tiny model to a loadable adapter.

accelerate 1.15 shards with FSDP only on accelerators: a multi-process CPU launch becomes MULTI_CPU (plain data
parallel) before the FSDP settings are looked at, so here the config is exercised end to end but the model is not
sharded; the trainer says so in a warning (docs/training.md, "Distribution").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.training import tiny_config, write_synthetic_folder, write_yaml


REPO = Path(__file__).resolve().parents[1]
STEPS = 8


@pytest.mark.slow
def test_fsdp_config_on_cpu_trains_and_saves_a_loadable_adapter(tiny_model_dir, tmp_path):
    data = write_synthetic_folder(tmp_path / "data", rows_per_family=8, families=("short_long", "long_short"))
    out = tmp_path / "out"
    config = write_yaml(
        tmp_path / "fsdp.yaml",
        tiny_config(
            tiny_model_dir, data, out, max_steps=STEPS, learning_rate=2e-3, save_strategy="steps", save_steps=STEPS
        ),
    )
    accelerate = Path(sys.executable).with_name("accelerate")
    # sync_module_states / cpu_ram_efficient_loading need an accelerator device: off on CPU.
    cmd = [
        str(accelerate),
        "launch",
        "--config_file",
        str(REPO / "recipes" / "accelerate_configs" / "fsdp.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        "0",
        "--fsdp_sync_module_states",
        "false",
        "--fsdp_cpu_ram_efficient_loading",
        "false",
        str(REPO / "recipes" / "train.py"),
        str(config),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FSDP was requested but accelerate runs MULTI_CPU" in proc.stderr

    state = json.loads((out / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == STEPS and losses[-1] < 0.5 * losses[0]
    assert json.loads((out / "e5_mistral_config.json").read_text())["training"]["world_size"] == 2

    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all(t.numel() for t in adapter.values())
    assert any(t.abs().max() > 0 for k, t in adapter.items() if "lora_B" in k)  # trained (B starts at zero)
    from peft import PeftModel
    from transformers import AutoModel

    model = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_model_dir), out)
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(adapter)
    key = next(k for k in adapter if "lora_B" in k)
    torch.testing.assert_close(loaded[key.replace(".weight", ".default.weight")], adapter[key])
