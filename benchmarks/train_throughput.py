"""Training throughput and GradCache memory: E5Trainer vs sentence-transformers, same backbone, data, batch, length.

    python benchmarks/train_throughput.py                       # tiny random Mistral (hidden 256, 4 layers), CPU
    python benchmarks/train_throughput.py --model smollm2 --batch-size 32 --seq-len 128
    python benchmarks/train_throughput.py --model PATH --device cuda --big-batch 2048 --chunk 64

Measured (each in its own process, LoRA r16 on the same backbone, 1 hard negative, tau 0.02 / scale 50):
  * samples/s of E5Trainer vs SentenceTransformerTrainer + MultipleNegativesRankingLoss (batch --batch-size);
  * samples/s of E5Trainer with GradCache vs CachedMultipleNegativesRankingLoss (batch --big-batch, chunk --chunk);
  * peak memory of E5Trainer + GradCache at --big-batch vs uncached E5Trainer at --chunk
    (CUDA: max_memory_allocated; CPU: growth of the peak RSS over the loaded model).
Targets (issue 4): E5Trainer >= 1.2x MNRL; GradCache peak at the big batch <= 1.3x the small uncached batch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the quick brown fox jumps over the lazy dog a man is playing a guitar while two dogs run across the field "
         "photosynthesis converts light energy into chemical energy the stock market fell sharply").split()


def make_rows(n: int, seq_len: int) -> list[dict]:
    # Texts longer than seq_len tokens, so every text is truncated to the same length in both trainers.
    def text(i, salt):
        return " ".join(WORDS[(i * 7 + j * salt) % len(WORDS)] for j in range(seq_len * 2))

    return [{"query": "Instruct: Retrieve semantically similar text.\nQuery: " + text(i, 3), "positive": text(i, 5),
             "negative": text(i, 11)} for i in range(n)]


def model_path(name: str, workdir: Path) -> str:
    if name == "tiny":
        sys.path.insert(0, str(REPO))
        from tests.tiny_models import build_tiny_mistral

        return str(build_tiny_mistral(workdir / "tiny", hidden_size=256, num_layers=4))
    if name == "smollm2":
        from e5_mistral.local_models import smollm2_path

        return str(smollm2_path())
    return name


def step_timer():
    """A callback recording when each optimizer step ends (step 1, which pays for warm-up, is not timed)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    return StepTimer()


def peak_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(opts) -> dict:
    import torch
    from datasets import Dataset

    torch.manual_seed(0)
    rows = make_rows(opts.batch * opts.steps, opts.seq_len)
    timer = step_timer()
    common = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=opts.batch, max_steps=opts.steps,
                  learning_rate=1e-4, report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
                  use_cpu=opts.device == "cpu", dataloader_num_workers=0, seed=0)
    if opts.kind.startswith("e5"):
        from e5_mistral.training import E5Trainer, E5TrainingConfig, ModelArguments
        from e5_mistral.training.model import load_backbone, load_tokenizer

        args = E5TrainingConfig(max_seq_length=opts.seq_len, gradcache_chunk_size=opts.chunk if opts.kind == "e5_gradcache" else None,
                                lora_dropout=0.0, **common)
        model_args = ModelArguments(model_name_or_path=opts.model, dtype="float32")
        tokenizer = load_tokenizer(model_args)
        model = load_backbone(model_args, args, tokenizer)
        data = Dataset.from_list([{"query": r["query"], "positive": r["positive"], "negatives": [r["negative"]]} for r in rows])
        trainer = E5Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[timer])
    else:
        from peft import LoraConfig, TaskType
        from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
        from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

        from e5_mistral.training.e5_config import PAPER_LORA_TARGETS

        transformer = Transformer(opts.model, max_seq_length=opts.seq_len, model_kwargs={"dtype": torch.float32})
        if transformer.tokenizer.pad_token is None:
            transformer.tokenizer.pad_token = transformer.tokenizer.eos_token
        model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "lasttoken"), Normalize()],
                                    device=opts.device)
        model.add_adapter(LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=PAPER_LORA_TARGETS, task_type=TaskType.FEATURE_EXTRACTION))
        if opts.kind == "st_cached":
            loss = CachedMultipleNegativesRankingLoss(model, scale=50.0, mini_batch_size=opts.chunk)
        else:
            loss = MultipleNegativesRankingLoss(model, scale=50.0)
        data = Dataset.from_list([{"anchor": r["query"], "positive": r["positive"], "negative": r["negative"]} for r in rows])
        st_args = SentenceTransformerTrainingArguments(**common)
        trainer = SentenceTransformerTrainer(model=model, args=st_args, train_dataset=data, loss=loss, callbacks=[timer])
    before = peak_bytes(opts.device)
    if opts.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    trainer.train()
    elapsed = timer.times[-1] - timer.times[0]
    return {"kind": opts.kind, "batch": opts.batch, "samples_per_s": opts.batch * (len(timer.times) - 1) / elapsed,
            "peak_growth_mb": (peak_bytes(opts.device) - before) / 2**20}


def run_child(opts, kind: str, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--model", opts.model, "--batch-size", str(batch), "--seq-len", str(opts.seq_len),
           "--steps", str(opts.steps), "--chunk", str(opts.chunk), "--device", opts.device]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {kind:14s} batch {batch:5d}: {result['samples_per_s']:8.1f} samples/s, peak growth {result['peak_growth_mb']:8.1f} MiB", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny (random Mistral, hidden 256, 4 layers), smollm2, or a path")
    parser.add_argument("--batch-size", type=int, default=32, help="batch for the uncached comparison (and GradCache chunk memory baseline)")
    parser.add_argument("--big-batch", type=int, default=512, help="batch for the GradCache comparisons")
    parser.add_argument("--chunk", type=int, default=32, help="GradCache chunk / CMNRL mini-batch size")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per measurement (the first is not timed)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this file")
    opts = parser.parse_args(argv)
    if opts.child:
        opts.kind, opts.batch = opts.child, opts.batch_size
        print(json.dumps(child(opts)))
        return 0
    with tempfile.TemporaryDirectory() as workdir:
        opts.model = model_path(opts.model, Path(workdir))
        print(f"backbone {opts.model}, seq len {opts.seq_len}, device {opts.device}, {opts.steps} steps each")
        e5 = run_child(opts, "e5", opts.batch_size)
        st = run_child(opts, "st", opts.batch_size)
        e5_small = e5 if opts.batch_size == opts.chunk else run_child(opts, "e5", opts.chunk)
        e5_gc = run_child(opts, "e5_gradcache", opts.big_batch)
        st_gc = run_child(opts, "st_cached", opts.big_batch)
    ratios = {
        "e5_vs_mnrl_speed": e5["samples_per_s"] / st["samples_per_s"],
        "gradcache_vs_cmnrl_speed": e5_gc["samples_per_s"] / st_gc["samples_per_s"],
        "gradcache_big_vs_uncached_small_memory": e5_gc["peak_growth_mb"] / max(e5_small["peak_growth_mb"], 1e-9),
    }
    print(f"E5Trainer / MNRL samples/s:                    {ratios['e5_vs_mnrl_speed']:.2f}x (target >= 1.2x)")
    print(f"E5Trainer+GradCache / CMNRL samples/s:         {ratios['gradcache_vs_cmnrl_speed']:.2f}x")
    print(f"GradCache peak at {opts.big_batch} / uncached at {opts.chunk}:      {ratios['gradcache_big_vs_uncached_small_memory']:.2f}x (target <= 1.3x)")
    if opts.json:
        Path(opts.json).write_text(json.dumps({"results": [e5, st, e5_small, e5_gc, st_gc], "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
