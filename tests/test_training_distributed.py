"""Two gloo processes train the tiny model from a YAML file through ``accelerate launch``.

Same seed and data: 2 processes x batch 8 (with and without GradCache) must log the same loss at every step
and end with the same adapter as 1 process x batch 16 (so loss and gradients are equal), and the loss must
go down on the small learnable set.
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

from e5_mistral.training.run import parse_args, train
from tests.helpers.training import tiny_config, write_synthetic_folder, write_yaml


REPO = Path(__file__).resolve().parents[1]
STEPS = 8


def launch_two_processes(config: Path, script: Path = REPO / "recipes" / "train.py", *extra: str):
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        str(script),
        str(config),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=400)


def logged(output_dir: Path, key: str) -> list[float]:
    state = json.loads((output_dir / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    return [h[key] for h in state["log_history"] if key in h]


@pytest.mark.slow
def test_two_processes_equal_one_full_batch_process(tiny_model_dir, tmp_path):
    data = write_synthetic_folder(tmp_path / "data", rows_per_family=8, families=("short_long", "long_short"))
    common = dict(max_steps=STEPS, learning_rate=2e-3, save_strategy="steps", save_steps=STEPS)
    runs = {
        "ddp": tiny_config(tiny_model_dir, data, tmp_path / "ddp", per_device_train_batch_size=8, **common),
        "ddp_gradcache": tiny_config(
            tiny_model_dir,
            data,
            tmp_path / "ddp_gradcache",
            per_device_train_batch_size=8,
            gradcache_chunk_size=3,
            **common,
        ),
        "single": tiny_config(tiny_model_dir, data, tmp_path / "single", per_device_train_batch_size=16, **common),
    }
    for name in ("ddp", "ddp_gradcache"):
        proc = launch_two_processes(write_yaml(tmp_path / f"{name}.yaml", runs[name]))
        assert proc.returncode == 0, proc.stderr[-3000:]
    train(*parse_args([str(write_yaml(tmp_path / "single.yaml", runs["single"]))]))

    meta = json.loads((tmp_path / "ddp" / "e5_mistral_config.json").read_text())
    assert meta["training"]["world_size"] == 2 and meta["training"]["global_batch_size"] == 16
    single = logged(tmp_path / "single", "loss")
    assert len(single) == STEPS
    assert single[-1] < 0.5 * single[0]  # it learns the small set
    for name in ("ddp", "ddp_gradcache"):
        assert logged(tmp_path / name, "loss") == pytest.approx(single, rel=1e-4), name
        # The gradient norm is scale-sensitive (Adam's update is not): a 1/W or W mis-scaling shows here.
        assert logged(tmp_path / name, "grad_norm") == pytest.approx(
            logged(tmp_path / "single", "grad_norm"), rel=1e-3
        ), name
        want = load_file(tmp_path / "single" / "adapter_model.safetensors")
        got = load_file(tmp_path / name / "adapter_model.safetensors")
        for key in want:
            # fp32 noise passes through Adam's normalisation; a wrong gradient would differ by about lr = 2e-3.
            torch.testing.assert_close(
                got[key], want[key], rtol=1e-3, atol=1e-4, msg=lambda m, key=key: f"{name}: {key}: {m}"
            )


@pytest.mark.slow
def test_batches_stay_one_family_across_both_processes_inside_one_all_config(tiny_model_dir, tmp_path):
    families = ("short_long", "long_short", "sts")
    data = write_synthetic_folder(tmp_path / "data", rows_per_family=8, families=families)
    entry = {
        "path": str(data),
        "name": "all",
        "group_batches_by": "family",
        "in_batch_negatives": {"long_short": False},
    }
    config = tiny_config(
        tiny_model_dir,
        data,
        tmp_path / "out",
        dataset_mixture=[entry],
        same_dataset_batches=True,
        per_device_train_batch_size=2,
    )
    proc = launch_two_processes(
        write_yaml(tmp_path / "groups.yaml", config), REPO / "tests" / "batch_groups_worker.py", str(tmp_path / "seen")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"seen.rank{r}.json").read_text()) for r in (0, 1))
    assert len(rank0) == len(rank1) == 6  # 24 rows, global batch 4
    for step, (a, b) in enumerate(zip(rank0, rank1)):
        # one global step: both processes' local batches come from the same single family
        assert len(a["groups"]) == 1 and a["groups"] == b["groups"], step
        assert len(set(a["families"] + b["families"])) == 1, step
    assert {a["families"][0] for a in rank0} == set(families)  # every family gets its batches
