"""GPU check of the training stage: throughput and MFU, GradCache, ZeRO-3 and FSDP save-and-reload, in one command.

    python -m benchmarks.gpu_check --json gpu_check.json             # one H100/H200: Mistral-7B shape, bf16
    python -m benchmarks.gpu_check --device cpu --tiny --json x.json  # every code path but the CUDA kernels (CI)

No download: the backbone is a Mistral-7B-shaped configuration (hidden 4096, MLP 14336, 32 layers, 32 heads with 8
key/value heads, vocabulary 32000; ``--layers`` for fewer) with random bf16 weights built on the device, and the
tokenizer is trained locally (tests/tiny_models.py). Each measurement runs in its own process:

* speed: E5Trainer (LoRA r16 on every linear layer, activation checkpointing, SDPA attention, bf16) for a few
  steps on rows whose queries and documents vary in length up to ``--seq-len`` tokens; sentence-transformers' MNRL
  and CMNRL on the same model, data, batch and settings. Reported: samples/s and tokens/s (non-padding tokens) of
  the fastest timed step, the peak memory of the last step, and MFU.
* MFU counts the FLOPs a step must do per non-padding token and sequence (the padding E5Trainer still computes is
  not counted): the frozen base's forward (2 x its non-embedding parameters per token, plus causal attention,
  2 x d x S^2 per layer and sequence), its backward for activations only (the same matmul FLOPs, twice the
  attention's), and its forward again (activation checkpointing recomputes it); LoRA's matrices in forward (2 x
  their parameters per token), backward (4 x, weights and activations) and recomputation (2 x). Divided by the step
  time and the device's dense bf16 peak (``--peak-tflops``; 989 for H100/H200 SXM).
* gradcache: one E5Trainer step at ``--big-batch`` with GradCache chunks of ``--chunk`` against the same step
  uncached (gradients of a few LoRA matrices compared), and the peak memory of the cached big-batch step against
  an uncached step at the chunk size.
* zero3 / fsdp: ``recipes/accelerate_configs/{deepspeed_zero3,fsdp}.yaml`` with one process, two steps, then the
  saved adapter loaded back and compared with the in-memory weights gathered by accelerate (the "empty adapter on
  save" failure). Skipped, with the reason, where the backend cannot run (DeepSpeed not installed, FSDP without
  an accelerator).

Every figure goes to ``--json``; a table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.train_throughput import make_rows, peak_bytes, step_callbacks


REPO = Path(__file__).resolve().parents[1]


MISTRAL_7B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8
)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
VOCAB = 32000
# Dense bf16 peak of the devices this check is sized for (NVIDIA spec sheets, SXM boards).
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}
GRAD_RTOL = 2e-2  # bf16 on the device; the CPU runs in fp32 and agrees far closer
CHECKS = ("speed", "gradcache", "zero3", "fsdp")


def build_backbone(workdir: Path, opts) -> Path:
    """A random Mistral-shaped backbone with the local tokenizer, saved in bf16 (fp32 on CPU) to ``workdir``."""
    import torch
    from transformers import MistralConfig, MistralModel

    from tests.tiny_models import build_tokenizer

    tokenizer = build_tokenizer(workdir)
    shape = dict(TINY if opts.tiny else MISTRAL_7B)
    if opts.layers:
        shape["num_hidden_layers"] = opts.layers
    config = MistralConfig(
        vocab_size=len(tokenizer) if opts.tiny else VOCAB,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    torch.manual_seed(0)
    dtype = torch.float32 if opts.device == "cpu" else torch.bfloat16
    with torch.device(opts.device):
        model = MistralModel(config).to(dtype)  # random weights, made where they will be used
    model.save_pretrained(workdir)
    del model
    return workdir


def _rows(opts, n: int) -> list[dict]:
    # make_rows counts words; the local tokenizer gives about 1.5 tokens a word, so lengths reach --seq-len
    return make_rows(n, opts.seq_len)


def _trainer_settings(opts, batch: int, steps: int) -> dict:
    """The TrainingArguments that E5Trainer and the sentence-transformers trainer share, so they run alike."""
    return dict(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=1e-4,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=opts.device == "cpu",
        bf16=opts.device != "cpu",
        dataloader_num_workers=0,
        seed=0,
    )


def _e5_trainer(opts, batch: int, steps: int, chunk: int | None, callbacks=()):
    from datasets import Dataset

    from e5_mistral.training import E5Trainer, E5TrainingConfig, ModelArguments
    from e5_mistral.training.model import load_backbone, load_tokenizer

    args = E5TrainingConfig(
        **_trainer_settings(opts, batch, steps),
        max_seq_length=opts.seq_len,
        gradcache_chunk_size=chunk,
        lora_dropout=0.0,
        activation_checkpointing=True,
    )
    model_args = ModelArguments(
        model_name_or_path=opts.model,
        dtype="float32" if opts.device == "cpu" else "bfloat16",
        attn_implementation="sdpa",
    )
    tokenizer = load_tokenizer(model_args)
    model = load_backbone(model_args, args, tokenizer)
    rows = _rows(opts, batch * steps)
    data = Dataset.from_list(
        [{"query": r["query"], "positive": r["positive"], "negatives": [r["negative"]]} for r in rows]
    )
    trainer = E5Trainer(
        model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=list(callbacks)
    )
    return trainer, tokenizer, rows


def count_flops(config, lora_params: int, lengths: list[int]) -> dict:
    """FLOPs of one training step over sequences of ``lengths`` non-padding tokens (see the module docstring)."""
    d, layers = config.hidden_size, config.num_hidden_layers
    head_dim = d // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * config.intermediate_size  # q, o, k, v, gate, up, down
    base_params = layers * per_layer
    tokens = sum(lengths)
    attention = sum(2 * d * s * s for s in lengths) * layers  # causal QK^T and AV, forward
    base_forward = 2 * base_params * tokens + attention
    base = (
        base_forward + (2 * base_params * tokens + 2 * attention) + base_forward
    )  # fwd, bwd (activations), recompute
    lora = (2 + 4 + 2) * lora_params * tokens
    return {"tokens": tokens, "base_forward": base_forward, "total": base + lora, "lora": lora}


def _lengths(tokenizer, rows, seq_len: int) -> list[int]:
    texts = [t for r in rows for t in (r["query"], r["positive"], r["negative"])]
    # the collator truncates to seq_len - 1 and appends EOS
    return [min(len(ids), seq_len - 1) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def child_speed(opts) -> dict:
    """samples/s, tokens/s, peak memory and MFU of ``opts.kind`` (e5, mnrl or cmnrl)."""
    import torch

    timer = step_callbacks(opts.device)
    if opts.kind == "e5":
        trainer, tokenizer, rows = _e5_trainer(opts, opts.batch, opts.steps, None, [timer])
        model = trainer.model
        config = model.get_base_model().config
    else:
        trainer, tokenizer, rows, config = _st_trainer(opts, timer)
        model = trainer.model
    lora_params = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    trainer.train()
    step_times = [b - a for a, b in zip(timer.times, timer.times[1:])]
    fastest = min(step_times)
    per_step = [rows[i * opts.batch : (i + 1) * opts.batch] for i in range(opts.steps)]
    flops = count_flops(config, lora_params, _lengths(tokenizer, per_step[-1], opts.seq_len))
    peak = peak_bytes(opts.device) - (timer.baseline or 0)
    result = {
        "kind": opts.kind,
        "samples_per_s": opts.batch / fastest,
        "tokens_per_s": flops["tokens"] / fastest,
        "step_seconds": fastest,
        "peak_memory_gib": peak / 2**30,
        "tflops_per_s": flops["total"] / fastest / 1e12,
        "flops_per_step": flops,
        "trainable_parameters": lora_params,
    }
    if opts.peak_tflops:
        result["mfu"] = result["tflops_per_s"] / opts.peak_tflops
    del trainer
    if opts.device == "cuda":
        torch.cuda.empty_cache()
    return result


def _st_trainer(opts, timer):
    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    from e5_mistral.training.e5_config import PAPER_LORA_TARGETS

    dtype = torch.float32 if opts.device == "cpu" else torch.bfloat16
    transformer = Transformer(
        opts.model, max_seq_length=opts.seq_len, model_kwargs={"dtype": dtype, "attn_implementation": "sdpa"}
    )
    model = SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), "lasttoken"), Normalize()],
        device=opts.device,
    )
    model.add_adapter(
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules=list(PAPER_LORA_TARGETS),
            task_type=TaskType.FEATURE_EXTRACTION,
        )
    )
    transformer.auto_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    rows = _rows(opts, opts.batch * opts.steps)
    data = Dataset.from_list(
        [{"anchor": r["query"], "positive": r["positive"], "negative": r["negative"]} for r in rows]
    )
    loss = (
        MultipleNegativesRankingLoss(model, scale=50.0)
        if opts.kind == "mnrl"
        else CachedMultipleNegativesRankingLoss(model, scale=50.0, mini_batch_size=opts.chunk)
    )
    args = SentenceTransformerTrainingArguments(**_trainer_settings(opts, opts.batch, opts.steps))
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=[timer])
    return trainer, transformer.tokenizer, rows, transformer.auto_model.config


def child_gradcache(opts) -> dict:
    """Gradients of a GradCache step at the big batch against the uncached step on the same batch."""
    import torch

    trainer, _, _ = _e5_trainer(opts, opts.big_batch, 1, None)
    cached, _, _ = _e5_trainer(opts, opts.big_batch, 1, opts.chunk)
    cached.model.load_state_dict(trainer.model.state_dict())
    batch = next(iter(trainer.get_train_dataloader()))
    grads = {}
    for name, t in (("uncached", trainer), ("gradcache", cached)):
        t.create_optimizer_and_scheduler(num_training_steps=1)
        t.current_gradient_accumulation_steps = 1  # set by train(); one step here, outside it
        t.model.train()
        t.model.zero_grad()
        t.training_step(t.model, {k: v.to(t.args.device) if hasattr(v, "to") else v for k, v in batch.items()})
        grads[name] = {
            n: p.grad.detach().float().cpu().clone() for n, p in t.model.named_parameters() if p.grad is not None
        }
    names = sorted(grads["uncached"])[:: max(1, len(grads["uncached"]) // 6)][:6]
    rel = {
        n: float((grads["gradcache"][n] - grads["uncached"][n]).norm() / grads["uncached"][n].norm().clamp_min(1e-12))
        for n in names
    }
    del trainer, cached
    if opts.device == "cuda":
        torch.cuda.empty_cache()
    return {
        "relative_difference": rel,
        "max_relative_difference": max(rel.values()),
        "equal": max(rel.values()) <= opts.grad_rtol,
    }


def child_memory(opts) -> dict:
    """Peak memory of the last of two steps at ``opts.batch`` (GradCache chunks of ``opts.chunk`` if kind says so)."""
    timer = step_callbacks(opts.device)
    trainer, _, _ = _e5_trainer(opts, opts.batch, 2, opts.chunk if opts.kind == "gradcache" else None, [timer])
    trainer.train()
    return {"peak_memory_gib": (peak_bytes(opts.device) - (timer.baseline or 0)) / 2**30}


def child_save_reload(opts) -> dict:
    """Under ``accelerate launch``: train two steps, save, load the adapter back, compare with the gathered weights."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    trainer, _, _ = _e5_trainer(opts, opts.batch, 2, None)
    trainer.args.output_dir = opts.out
    trainer.train()
    trainer.save_model(opts.out)
    state = trainer.accelerator.get_state_dict(trainer.model)  # gathered from ZeRO-3 partitions / FSDP shards
    if not trainer.accelerator.is_main_process:
        return {}
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    in_memory = get_peft_model_state_dict(unwrapped, state_dict=state)
    saved = load_file(Path(opts.out) / "adapter_model.safetensors")
    empty = [k for k, t in saved.items() if t.numel() == 0]
    common = sorted(set(saved) & set(in_memory))
    diff = max(float((saved[k].float() - in_memory[k].float().cpu()).abs().max()) for k in common) if common else None
    return {
        "distributed_type": str(trainer.accelerator.distributed_type),
        "tensors_saved": len(saved),
        "tensors_in_memory": len(in_memory),
        "empty_tensors": len(empty),
        "max_abs_difference": diff,
        "equal": bool(common) and not empty and len(common) == len(in_memory) and diff == 0.0,
    }


# -- the parent ----------------------------------------------------------------------------------------------------
def _child(opts, mode: str, launcher: list[str] | None = None, **overrides) -> dict:
    out = Path(tempfile.mkdtemp()) / "result.json"
    flags = {
        **{
            k: getattr(opts, k)
            for k in ("model", "device", "seq_len", "batch", "big_batch", "chunk", "steps", "peak_tflops", "grad_rtol")
        },
        **overrides,
    }
    args = [f"--{k.replace('_', '-')}={v}" for k, v in flags.items() if v is not None]
    script = [str(Path(__file__).resolve()), "--child", mode, "--child-out", str(out), *args]
    cmd = (launcher or [sys.executable]) + script
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(
            f"{mode} ({' '.join(cmd[:4])} ...) failed with code {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    result = json.loads(out.read_text())
    result["wall_seconds"] = time.monotonic() - started
    return result


def _accelerate(config: str, opts) -> list[str]:
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "recipes" / "accelerate_configs" / config),
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--main_process_port",
        "0",
    ]
    if opts.device == "cpu":
        launch += ["--mixed_precision", "no"]
    if config == "fsdp.yaml" and opts.device == "cpu":
        launch += ["--fsdp_sync_module_states", "false", "--fsdp_cpu_ram_efficient_loading", "false"]
    return launch


def skipped_reason(check: str, opts) -> str | None:
    import importlib.util

    if check == "zero3" and importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed (pip install deepspeed)"
    if check == "zero3" and opts.device == "cpu":
        return "DeepSpeed ZeRO-3 needs an accelerator"
    return None


def run_checks(opts) -> dict:
    import torch

    device_name = torch.cuda.get_device_name() if opts.device == "cuda" else "cpu"
    if opts.peak_tflops is None:
        opts.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "device": device_name,
        "peak_tflops": opts.peak_tflops,
        "settings": {
            k: getattr(opts, k) for k in ("tiny", "layers", "seq_len", "batch", "big_batch", "chunk", "steps")
        },
    }
    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    started = time.monotonic()
    opts.model = str(build_backbone(workdir / "backbone", opts))
    results["build_seconds"] = time.monotonic() - started
    checks = opts.checks.split(",")
    if "speed" in checks:
        results["speed"] = {kind: _child(opts, "speed", kind=kind) for kind in ("e5", "mnrl", "cmnrl")}
        e5 = results["speed"]["e5"]["samples_per_s"]
        results["speed_ratio"] = {kind: e5 / results["speed"][kind]["samples_per_s"] for kind in ("mnrl", "cmnrl")}
    if "gradcache" in checks:
        equality = _child(opts, "gradcache")
        big = _child(opts, "memory", kind="gradcache", batch=opts.big_batch)
        small = _child(opts, "memory", kind="uncached", batch=opts.chunk)
        results["gradcache"] = {
            **equality,
            "peak_memory_gib_cached_big": big["peak_memory_gib"],
            "peak_memory_gib_uncached_chunk": small["peak_memory_gib"],
            "memory_ratio": big["peak_memory_gib"] / max(small["peak_memory_gib"], 1e-9),
        }
    for check, config in (("zero3", "deepspeed_zero3.yaml"), ("fsdp", "fsdp.yaml")):
        if check not in checks:
            continue
        reason = skipped_reason(check, opts)
        if reason:
            results[check] = {"skipped": reason}
            continue
        results[check] = _child(opts, "save_reload", _accelerate(config, opts), out=str(workdir / check))
    results["seconds"] = time.monotonic() - started
    return results


def table(results: dict) -> str:
    lines = [f"GPU check on {results['device']} ({results['date']}), settings {results['settings']}", ""]
    if "speed" in results:
        lines += [
            "| trainer | samples/s | tokens/s | TFLOP/s | MFU | peak memory (GiB) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for kind, r in results["speed"].items():
            mfu = f"{r['mfu']:.3f}" if r.get("mfu") is not None else "-"
            lines.append(
                f"| {kind} | {r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} | {r['tflops_per_s']:.2f} | {mfu} "
                f"| {r['peak_memory_gib']:.2f} |"
            )
        lines.append("E5Trainer / MNRL: {mnrl:.2f}x, / CMNRL: {cmnrl:.2f}x".format(**results["speed_ratio"]))
    if "gradcache" in results:
        g = results["gradcache"]
        lines.append(
            f"GradCache: max relative gradient difference {g['max_relative_difference']:.2e} "
            f"({'equal' if g['equal'] else 'NOT equal'}), peak memory {g['peak_memory_gib_cached_big']:.2f} GiB "
            f"at the big batch vs {g['peak_memory_gib_uncached_chunk']:.2f} GiB uncached at the chunk "
            f"({g['memory_ratio']:.2f}x)"
        )
    for check in ("zero3", "fsdp"):
        if check in results:
            r = results[check]
            lines.append(
                f"{check}: skipped ({r['skipped']})"
                if "skipped" in r
                else f"{check} ({r['distributed_type']}): {r['tensors_saved']} adapter tensors saved, {r['empty_tensors']} "
                f"empty, max |saved - in memory| {r['max_abs_difference']}: {'equal' if r['equal'] else 'NOT equal'}"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny model (hidden 64, 2 layers) instead of the 7B shape"
    )
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than the shape's (same width)")
    parser.add_argument(
        "--seq-len", type=int, default=None, help="longest text in tokens (default 512; 64 with --tiny)"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="per-step batch of the speed runs (default 32; 8 with --tiny)"
    )
    parser.add_argument("--big-batch", type=int, default=None, help="GradCache batch (default 128; 16 with --tiny)")
    parser.add_argument(
        "--chunk", type=int, default=None, help="GradCache chunk and CMNRL mini-batch (default 16; 4 with --tiny)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per speed run, the first not timed (default 4; 3 with --tiny)"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (default: by device name)"
    )
    parser.add_argument(
        "--grad-rtol",
        type=float,
        default=None,
        help=f"GradCache gradient tolerance (default {GRAD_RTOL}; 1e-4 on CPU)",
    )
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma list of {', '.join(CHECKS)}")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    small = opts.tiny or opts.device == "cpu"
    for name, big_value, small_value in (
        ("seq_len", 512, 64),
        ("batch", 32, 8),
        ("big_batch", 128, 16),
        ("chunk", 16, 4),
        ("steps", 4, 3),
        ("grad_rtol", GRAD_RTOL, 1e-4),
    ):
        if getattr(opts, name) is None:
            setattr(opts, name, small_value if small else big_value)
    if opts.child:
        result = {
            "speed": child_speed,
            "gradcache": child_gradcache,
            "memory": child_memory,
            "save_reload": child_save_reload,
        }[opts.child](opts)
        if result:
            Path(opts.child_out).write_text(json.dumps(result, indent=2))
        return 0
    from e5_mistral.versions import check_versions

    check_versions()
    results = run_checks(opts)
    print(table(results))
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
