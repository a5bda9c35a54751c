"""``e5-mistral merge``: LoRA checkpoints of one base model merged into one checkpoint (a "model soup").

peft's ``add_weighted_adapter`` does the arithmetic. ``linear`` is the weighted sum of the adapters' weight
updates, exactly (peft's ``cat``: the merged adapter's rank is the sum of theirs); ``ties`` is TIES merging of the
updates (peft's ``ties_svd``: trimmed to ``--density``, sign-elected, refactored by SVD to the largest rank; its
disjoint merge already averages the agreeing updates, so the weights are scaled to a mean of 1 there, and two copies
of one adapter merge into that adapter). The output is a checkpoint as training writes it (adapter, tokenizer,
``e5_mistral_config.json`` naming what was merged and the merged adapter's real rank), which ``e5-mistral export``
takes. Checkpoints that disagree on what the export depends on (pooling, EOS, lengths, ...) are refused.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

from ..errors import E5MistralError
from ..export.checkpoint import TOKENIZER_FILES, load_config, resolve_checkpoint
from ..options import option
from ..output_folders import check_output_folder


logger = logging.getLogger(__name__)

METHODS = {"linear": "cat", "ties": "ties_svd"}  # ours -> peft's combination_type


@dataclass
class MergeArguments:
    output: Optional[str] = option("folder for the merged checkpoint", None)
    weights: Optional[list[float]] = option("one weight per checkpoint (default: equal weights summing to 1)", None)
    method: str = option("linear (exact weighted sum of the updates) or ties", "linear")
    density: float = option("ties: the share of each update's entries kept", 0.5)
    overwrite: bool = option("replace a non-empty --output folder", False)


def _base_key(base_model: str) -> str:
    """A base model's identity: a folder by its resolved path, a Hub id as written."""
    path = Path(base_model).expanduser()
    return str(path.resolve()) if path.exists() else base_model


# What the export reads from a checkpoint's run metadata: merged checkpoints must agree on every one of them.
EXPORT_FIELDS = (
    "pooling",
    "normalize",
    "append_eos",
    "max_seq_length",
    "query_max_length",
    "matryoshka_dims",
    "rope_theta",
    "instructed_queries",
)


def _check_agreement(checkpoints: list) -> None:
    first = checkpoints[0]
    for checkpoint in checkpoints[1:]:
        for name in EXPORT_FIELDS:
            mine, theirs = getattr(first.run_config, name), getattr(checkpoint.run_config, name)
            if mine != theirs:
                raise E5MistralError(
                    f"the checkpoints disagree on {name} ({first.path}: {mine!r}, {checkpoint.path}: {theirs!r}); "
                    "merge takes checkpoints that export alike"
                )


def _check(checkpoints: list, args: MergeArguments) -> list[float]:
    if len(checkpoints) < 2:
        raise E5MistralError("merge needs at least two checkpoints")
    if args.output is None:
        raise E5MistralError("--output is required")
    if args.method not in METHODS:
        raise E5MistralError(f"--method must be one of {', '.join(METHODS)}, not {args.method!r}")
    if not 0 < args.density <= 1:
        raise E5MistralError(f"--density must be in (0, 1], got {args.density}")
    weights = args.weights or [1 / len(checkpoints)] * len(checkpoints)
    if len(weights) != len(checkpoints):
        raise E5MistralError(f"--weights gives {len(weights)} weights for {len(checkpoints)} checkpoints")
    for checkpoint in checkpoints:
        if not checkpoint.is_adapter:
            raise E5MistralError(f"{checkpoint.path} is a full model, not a LoRA adapter: merge takes adapters only")
    if len({_base_key(c.base_model) for c in checkpoints}) > 1:
        raise E5MistralError(
            "the checkpoints are adapters of different base models ("
            + ", ".join(f"{c.path}: {c.base_model}" for c in checkpoints)
            + "): merge takes adapters of one base model"
        )
    _check_agreement(checkpoints)
    return weights


def merge(paths: Sequence[str], args: MergeArguments) -> Path:
    """Merge the LoRA checkpoints ``paths`` into ``args.output``; returns the output folder."""
    import torch
    from peft import PeftModel
    from transformers import AutoModel

    checkpoints = [resolve_checkpoint(p) for p in paths]
    weights = _check(checkpoints, args)
    output = check_output_folder(args.output, [c.path for c in checkpoints], args.overwrite)

    first = checkpoints[0]
    base = AutoModel.from_pretrained(
        first.base_model, config=load_config(first.base_model, f"the base model of {first.path}"), dtype=torch.float32
    )
    names = [f"input{i}" for i in range(len(checkpoints))]
    model = PeftModel.from_pretrained(base, str(first.path), adapter_name=names[0])
    for name, checkpoint in zip(names[1:], checkpoints[1:]):
        model.load_adapter(str(checkpoint.path), adapter_name=name)
    # ties averages the agreeing updates itself: weights of mean 1 keep a single update's size (1/n would n-fold it)
    scaled = [w * len(weights) for w in weights] if args.method == "ties" else weights
    model.add_weighted_adapter(names, scaled, "default", combination_type=METHODS[args.method], density=args.density)
    for name in names:
        model.delete_adapter(name)

    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    model.save_pretrained(str(output), selected_adapters=["default"])
    for name in TOKENIZER_FILES + ("special_tokens_map.json", "chat_template.jinja"):
        if first.tokenizer_path is not None and (first.tokenizer_path / name).is_file():
            shutil.copy2(first.tokenizer_path / name, output / name)
    merged = {"checkpoints": [str(c.path) for c in checkpoints], "weights": weights, "method": args.method}
    if args.method == "ties":
        merged["density"] = args.density
    adapter = model.peft_config["default"]
    lora = {**(first.run_config.lora or {}), "r": adapter.r, "lora_alpha": adapter.lora_alpha}
    replace(first.run_config, merged=merged, lora=lora).save(output)
    return output


def main(argv: Sequence[str] | None = None, prog: str = "e5-mistral merge") -> int:
    from ..cli import CommandParser, fail, log_lines, run

    parser = CommandParser([MergeArguments], prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT", help="two or more LoRA checkpoints")
    args, positionals = parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)
    if len(positionals.checkpoints) < 2:
        return fail(prog, E5MistralError("merge needs at least two checkpoints (CHECKPOINT CHECKPOINT ...)"), code=2)
    log_lines(prog)

    def _merge() -> int:
        output = merge(positionals.checkpoints, args)
        print(f"merged checkpoint in {output} (e5-mistral export {output} OUT)")
        return 0

    return run(prog, _merge)
