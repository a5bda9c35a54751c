"""Training throughput and GradCache memory: E5Trainer vs sentence-transformers, same backbone, data, batch, length.

    python -m benchmarks.train_throughput                       # tiny random Mistral (hidden 256, 4 layers), CPU
    python -m benchmarks.train_throughput --model smollm2 --batch-size 32 --seq-len 128 --measure speed
    python -m benchmarks.train_throughput --model PATH --device cuda --big-batch 2048 --chunk 64

Measured (each in its own process, LoRA r16 on the same backbone, 1 hard negative, tau 0.02 / scale 50):
  * samples/s of E5Trainer vs SentenceTransformerTrainer + MultipleNegativesRankingLoss (batch --batch-size);
  * samples/s of E5Trainer with GradCache vs CachedMultipleNegativesRankingLoss (batch --big-batch, chunk --chunk);
  * peak memory of E5Trainer + GradCache at --big-batch vs uncached E5Trainer at --chunk
    during the last optimizer step (CUDA: max_memory_allocated minus memory_allocated at its start; CPU: peak RSS
    minus the RSS at its start, the kernel's high-water mark reset through /proc/self/clear_refs and glibc made to
    return freed blocks at once), so loading, the optimizer state and first-step allocations do not count.
Texts vary in length as in real data (queries short, documents from short to longer than --seq-len);
--fixed-length makes every text longer than --seq-len, so nothing is padded. samples/s is the batch over the
fastest timed step, and runs are interleaved --repeats times with the best kept: other processes on the
machine only ever slow a step down.
Targets: E5Trainer >= 1.2x MNRL; GradCache peak at the big batch <= 1.3x the small uncached batch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
WORDS = (
    "the quick brown fox jumps over the lazy dog a man is playing a guitar while two dogs run across the field "
    "photosynthesis converts light energy into chemical energy the stock market fell sharply"
).split()


def make_rows(n: int, seq_len: int, fixed_length: bool = False) -> list[dict]:
    """Seeded rows. Word counts: query seq/16..seq/3, positive and negative seq/8..seq (some cut at seq tokens)."""
    rng = random.Random(0)

    def text(i, salt, lo, hi):
        words = seq_len * 2 if fixed_length else rng.randint(max(lo, 1), max(hi, 1))
        return " ".join(WORDS[(i * 7 + j * salt) % len(WORDS)] for j in range(words))

    return [
        {
            "query": "Instruct: Retrieve semantically similar text.\nQuery: "
            + text(i, 3, seq_len // 16, seq_len // 3),
            "positive": text(i, 5, seq_len // 8, seq_len),
            "negative": text(i, 11, seq_len // 8, seq_len),
        }
        for i in range(n)
    ]


def model_path(name: str, workdir: Path) -> str:
    if name == "tiny":
        from tests.tiny_models import build_tiny_mistral

        return str(build_tiny_mistral(workdir / "tiny", hidden_size=256, num_layers=4))
    if name == "smollm2":
        from e5_mistral.local_models import smollm2_path

        return str(smollm2_path())
    return name


def step_callbacks(device: str):
    """Record when each optimizer step ends (step 1, which pays for warm-up, is not timed), and the memory in use
    when the last step begins, from where its peak is tracked (one-time allocations of earlier steps do not count)."""
    from transformers import TrainerCallback

    class StepProbe(TrainerCallback):
        def __init__(self):
            self.times, self.baseline = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == state.max_steps - 1:
                self.baseline = memory_baseline(device)

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    return StepProbe()


def _status_kib(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def memory_baseline(device: str) -> int:
    """Bytes in use now; from here on the peak is tracked (CUDA peak stats / the kernel's RSS high-water mark)."""
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return _status_kib("VmRSS") * 1024
    except OSError:  # no /proc: the peak since process start (includes loading)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated()
    try:
        return _status_kib("VmHWM") * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(opts) -> dict:
    import torch
    from datasets import Dataset

    torch.manual_seed(0)
    rows = make_rows(opts.batch * opts.steps, opts.seq_len, opts.fixed_length)
    timer = step_callbacks(opts.device)
    common = dict(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=opts.batch,
        max_steps=opts.steps,
        learning_rate=1e-4,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=opts.device == "cpu",
        dataloader_num_workers=0,
        seed=0,
    )
    if opts.kind.startswith("e5"):
        from e5_mistral.training import E5Trainer, E5TrainingConfig, ModelArguments
        from e5_mistral.training.model import load_backbone, load_tokenizer

        args = E5TrainingConfig(
            max_seq_length=opts.seq_len,
            gradcache_chunk_size=opts.chunk if opts.kind == "e5_gradcache" else None,
            length_groups=opts.length_groups,
            lora_dropout=0.0,
            **common,
        )
        model_args = ModelArguments(model_name_or_path=opts.model, dtype="float32")
        tokenizer = load_tokenizer(model_args)
        model = load_backbone(model_args, args, tokenizer)
        data = Dataset.from_list(
            [{"query": r["query"], "positive": r["positive"], "negatives": [r["negative"]]} for r in rows]
        )
        trainer = E5Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[timer])
    else:
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

        transformer = Transformer(opts.model, max_seq_length=opts.seq_len, model_kwargs={"dtype": torch.float32})
        if transformer.tokenizer.pad_token is None:
            transformer.tokenizer.pad_token = transformer.tokenizer.eos_token
        model = SentenceTransformer(
            modules=[transformer, Pooling(transformer.get_embedding_dimension(), "lasttoken"), Normalize()],
            device=opts.device,
        )
        model.add_adapter(
            LoraConfig(
                r=16,
                lora_alpha=32,
                lora_dropout=0.0,
                target_modules=PAPER_LORA_TARGETS,
                task_type=TaskType.FEATURE_EXTRACTION,
            )
        )
        if opts.kind == "st_cached":
            loss = CachedMultipleNegativesRankingLoss(model, scale=50.0, mini_batch_size=opts.chunk)
        else:
            loss = MultipleNegativesRankingLoss(model, scale=50.0)
        data = Dataset.from_list(
            [{"anchor": r["query"], "positive": r["positive"], "negative": r["negative"]} for r in rows]
        )
        st_args = SentenceTransformerTrainingArguments(**common)
        trainer = SentenceTransformerTrainer(
            model=model, args=st_args, train_dataset=data, loss=loss, callbacks=[timer]
        )
    trainer.train()
    # The fastest timed step: other processes on the machine only ever slow a step down.
    steps = [b - a for a, b in zip(timer.times, timer.times[1:])]
    return {
        "kind": opts.kind,
        "batch": opts.batch,
        "steps": opts.steps,
        "step_seconds": steps,
        "samples_per_s": opts.batch / min(steps) if steps else float("nan"),
        "peak_growth_mb": (peak_bytes(opts.device) - timer.baseline) / 2**20,
    }


def run_child(opts, kind: str, batch: int, steps: int, memory: bool = False) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--model",
        opts.model,
        "--batch-size",
        str(batch),
        "--seq-len",
        str(opts.seq_len),
        "--steps",
        str(steps),
        "--chunk",
        str(opts.chunk),
        "--device",
        opts.device,
        "--length-groups",
        str(opts.length_groups),
    ]
    cmd += ["--fixed-length"] if opts.fixed_length else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    if memory and opts.device == "cpu":
        # A fixed mmap threshold: glibc then returns every large freed block at once, so RSS follows live memory.
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"  {kind:14s} batch {batch:5d}, {steps} steps: {result['samples_per_s']:8.2f} samples/s, "
        f"peak growth {result['peak_growth_mb']:8.1f} MiB",
        flush=True,
    )
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="tiny", help="tiny (random Mistral, hidden 256, 4 layers), smollm2, or a path"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="batch for the uncached speed comparison")
    parser.add_argument("--big-batch", type=int, default=512, help="batch for the GradCache comparisons")
    parser.add_argument(
        "--chunk",
        type=int,
        default=32,
        help="GradCache chunk / CMNRL mini-batch size, and the uncached batch of the memory baseline",
    )
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per speed run (the first is not timed)")
    parser.add_argument(
        "--memory-steps", type=int, default=2, help="optimizer steps per memory-only run (the last is measured)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats of the speed runs (best kept)")
    parser.add_argument("--length-groups", type=int, default=4, help="E5TrainingConfig.length_groups")
    parser.add_argument(
        "--fixed-length", action="store_true", help="every text longer than --seq-len (no padding anywhere)"
    )
    parser.add_argument(
        "--measure",
        default="speed,gradcache,memory",
        help="comma list: speed (E5 vs MNRL), gradcache (E5+GradCache vs CMNRL), memory (GradCache big vs uncached chunk)",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this file")
    opts = parser.parse_args(argv)
    from e5_mistral.versions import check_versions

    check_versions()  # a fresh unpinned install can break in transformers' add_adapter; say how to fix it
    if opts.child:
        opts.kind, opts.batch = opts.child, opts.batch_size
        print(json.dumps(child(opts)))
        return 0
    measure = set(opts.measure.split(","))
    if measure - {"speed", "gradcache", "memory"}:
        parser.error(f"unknown --measure {opts.measure!r}")
    results, ratios = [], {}
    with tempfile.TemporaryDirectory() as workdir:
        opts.model = model_path(opts.model, Path(workdir))
        print(
            f"backbone {opts.model}, seq len {opts.seq_len}, device {opts.device}, "
            f"{'fixed' if opts.fixed_length else 'varied'} lengths, length_groups {opts.length_groups}"
        )

        def best(pairs):
            runs = {kind: [] for kind, _, _ in pairs}
            for _ in range(opts.repeats):
                for kind, batch, steps in pairs:
                    runs[kind].append(run_child(opts, kind, batch, steps))
                    results.append(runs[kind][-1])
            return {
                kind: {
                    "samples_per_s": max(r["samples_per_s"] for r in rs),
                    "peak_growth_mb": statistics.median(r["peak_growth_mb"] for r in rs),
                }
                for kind, rs in runs.items()
            }

        if "speed" in measure:
            r = best([("e5", opts.batch_size, opts.steps), ("st", opts.batch_size, opts.steps)])
            ratios["e5_vs_mnrl_speed"] = r["e5"]["samples_per_s"] / r["st"]["samples_per_s"]
            print(
                f"E5Trainer / MNRL samples/s at batch {opts.batch_size}: {ratios['e5_vs_mnrl_speed']:.2f}x (target >= 1.2x)",
                flush=True,
            )
        if "gradcache" in measure:
            r = best([("e5_gradcache", opts.big_batch, opts.steps), ("st_cached", opts.big_batch, opts.steps)])
            ratios["gradcache_vs_cmnrl_speed"] = r["e5_gradcache"]["samples_per_s"] / r["st_cached"]["samples_per_s"]
            print(
                f"E5Trainer+GradCache / CMNRL samples/s at batch {opts.big_batch}: {ratios['gradcache_vs_cmnrl_speed']:.2f}x",
                flush=True,
            )
        if "memory" in measure:
            big = run_child(opts, "e5_gradcache", opts.big_batch, opts.memory_steps, memory=True)
            small = run_child(opts, "e5", opts.chunk, opts.memory_steps, memory=True)
            results += [big, small]
            ratios["gradcache_big_vs_uncached_small_memory"] = big["peak_growth_mb"] / max(
                small["peak_growth_mb"], 1e-9
            )
            print(
                f"GradCache peak at {opts.big_batch} / uncached at {opts.chunk}: "
                f"{ratios['gradcache_big_vs_uncached_small_memory']:.2f}x (target <= 1.3x)",
                flush=True,
            )
    if opts.json:
        Path(opts.json).write_text(json.dumps({"options": vars(opts), "results": results, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
