"""Turn a training checkpoint into a sentence-transformers folder: what users download.

The folder holds Transformer -> Pooling -> Normalize, the merged weights, a tokenizer whose post-processor adds
EOS (the training contract), the query prompts in ``config_sentence_transformers.json`` and a model card. It
loads with ``SentenceTransformer(OUTPUT_DIR)`` and nothing but sentence-transformers installed.

The folder is built in a sibling staging directory and renamed into place at the end, so a failure never leaves
a half-written export behind; an upload failure afterwards leaves the complete export untouched.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import E5MistralError, MissingFileError
from ..evaluation.prompts import task_prompts
from ..instructions import EVALUATION_INSTRUCTIONS, EVALUATION_TASK_TYPES, query_prompt
from ..options import WEIGHT_DTYPES, option
from ..output_folders import check_output_folder
from ..pooling import ensure_pad_token
from ..rope import rope_parameters
from .checkpoint import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    RUN_METADATA_FILE,
    check_architecture,
    load_merged_backbone,
    resolve_checkpoint,
)
from .eos_contract import bake_eos_contract, default_affixes, write_legacy_flags


logger = logging.getLogger(__name__)

# The paper's MS-MARCO instruction: the default for a plain ``prompt_name="query"``.
DEFAULT_QUERY_INSTRUCTION = EVALUATION_INSTRUCTIONS["MSMARCO"]
TEXT_ONLY_MODALITY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
# What the card's usage example shows for a custom instruction.
CUSTOM_INSTRUCTION_EXAMPLE = "Given a recipe name, retrieve recipes that match it"


@dataclass
class ExportArguments:
    """Options of ``e5-mistral export``."""

    checkpoint_dir: str | None = option(
        "Training output (PEFT adapter or full model) or one of its checkpoint-N folders.", None
    )
    output_dir: str | None = option("Where to write the sentence-transformers folder.", None)
    keep_adapter: bool = option("Also copy the LoRA adapter (un-merged) to OUTPUT_DIR/adapter/.", False)
    max_seq_length: int | None = option(
        "Truncation length in tokens, EOS included (default: the trained length, else 512).", None
    )
    dtype: str = option("Weight dtype of the export.", "float32", choices=list(WEIGHT_DTYPES))
    query_instruction: str = option("Task instruction of the default 'query' prompt.", DEFAULT_QUERY_INSTRUCTION)
    eval_results: str | None = option(
        "summary.json of `e5-mistral evaluate` (or its folder) for the card's evaluation table.", None
    )
    license: str | None = option("License id written into the card metadata (e.g. apache-2.0).", None)
    model_name: str | None = option("Name shown in the card (default: the repo id or folder name).", None)
    push_to_hub: str | None = option("Upload the export to this Hub repo (e.g. user/my-e5).", None)
    private: bool = option("Create the Hub repo as private.", False)
    rope_theta: float | None = option(
        "Save the model with this RoPE base (the paper's context extension: 10^4 -> 10^5).", None
    )
    interpolate: float = option(
        "Keep this share of the fine-tuning: base + w x (trained - base), w in (0, 1] (WiSE-FT; 0.5 trades part of a "
        "domain's gain for the starting model's strength elsewhere).",
        1.0,
    )
    overwrite: bool = option("Replace OUTPUT_DIR if it already holds files.", False)

    def __post_init__(self):
        if self.dtype not in WEIGHT_DTYPES:
            raise E5MistralError(f"--dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {self.dtype!r}")
        if self.max_seq_length is not None and self.max_seq_length < 2:
            raise E5MistralError(f"--max-seq-length must be at least 2 (text + EOS), got {self.max_seq_length}")
        if self.private and not self.push_to_hub:
            raise E5MistralError("--private only applies together with --push-to-hub REPO")
        query_prompt(self.query_instruction)  # rejects an empty instruction early
        if not 0 < self.interpolate <= 1:
            raise E5MistralError(f"--interpolate must be in (0, 1], got {self.interpolate}")


MTEB_REVISIONS = (".v2", ".v3")


def mteb_task_names(name: str) -> list[str]:
    """``name`` and the revisions of it that the installed mteb registers (``Banking77Classification.v2``)."""
    from mteb import get_task

    names = [name]
    for suffix in MTEB_REVISIONS:
        try:
            get_task(name + suffix)
        except KeyError:
            continue
        names.append(name + suffix)
    return names


def build_prompts(query_instruction: str, instructed: bool = True) -> dict[str, str]:
    """The prompts that make sentence-transformers and stock mteb encode as the paper does, with no help from this
    package: ``query`` (``encode_query``), a bare ``document`` (``encode_document``), and for every MTEB task of the
    paper's evaluation table (and its mteb 2 revisions) the keys mteb looks up (see ``task_prompts``). A model
    trained without instructions (``instructed`` False) gets empty ``query`` and ``document`` prompts only."""
    if not instructed:
        return {"query": "", "document": ""}
    prompts = {"query": query_prompt(query_instruction), "document": ""}
    for name, instruction in EVALUATION_INSTRUCTIONS.items():
        for task_name in mteb_task_names(name):
            prompts.update(task_prompts(task_name, EVALUATION_TASK_TYPES[name], query_prompt(instruction)))
    return prompts


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise MissingFileError(f"cannot load the tokenizer from {path}: {' '.join(str(err).split())[:300]}") from err


def export_checkpoint(args: ExportArguments) -> Path:
    """Export ``args.checkpoint_dir`` to ``args.output_dir`` (and push it); returns the output folder.

    Everything is written to a staging folder beside the output and renamed into place at the end, so a failure
    leaves nothing half-written."""
    from .model_card import load_eval_results

    if not args.checkpoint_dir or not args.output_dir:
        raise E5MistralError("both CHECKPOINT_DIR and OUTPUT_DIR are required")
    checkpoint = resolve_checkpoint(args.checkpoint_dir)
    output_dir = check_output_folder(args.output_dir, [checkpoint.path], args.overwrite, flag="OUTPUT_DIR")
    # Read the evaluation results before the heavy work, so a typo fails in a second.
    evaluation = load_eval_results(args.eval_results) if args.eval_results else (None, None)
    check_architecture(checkpoint)
    if checkpoint.tokenizer_path is None:
        raise MissingFileError(f"no tokenizer files in {checkpoint.path} and no base model to take them from")
    if args.keep_adapter and not checkpoint.is_adapter:
        raise E5MistralError(f"--keep-adapter: {checkpoint.path} is a full fine-tune, it has no adapter")

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.partial-"))
    try:
        tokenizer, affixes, architecture, embedding_dim = _save_sentence_transformer(args, checkpoint, staging)
        _copy_run_files(args, checkpoint, staging)
        card = _model_card(args, checkpoint, output_dir, tokenizer, affixes, architecture, embedding_dim, evaluation)
        (staging / "README.md").write_text(card, encoding="utf-8")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("exported %s to %s", checkpoint.path, output_dir)

    if args.push_to_hub:
        from .hub import push_folder

        push_folder(output_dir, args.push_to_hub, private=args.private)
    return output_dir


def _save_sentence_transformer(args: ExportArguments, checkpoint, staging: Path):
    """The merged backbone as Transformer -> Pooling -> Normalize, saved to ``staging`` with the EOS contract
    baked into its tokenizer; returns (tokenizer, affixes, architecture, embedding size)."""
    import torch

    run = checkpoint.run_config
    max_seq_length = args.max_seq_length or run.max_seq_length
    tokenizer, affixes = _contract_tokenizer(checkpoint, max_seq_length)
    model = load_merged_backbone(checkpoint, args.interpolate)
    rope_theta = args.rope_theta if args.rope_theta is not None else run.rope_theta  # a LoRA run's base, recorded
    if rope_theta is not None:
        model.config.rope_parameters = rope_parameters(model.config, rope_theta, str(checkpoint.path))
    architecture = ", ".join(model.config.architectures or []) or model.config.model_type
    embedding_dim = model.config.hidden_size
    torch_dtype = getattr(torch, args.dtype)
    backbone_dir = Path(tempfile.mkdtemp(dir=staging.parent, prefix=f"{staging.name}.backbone-"))
    try:
        model.to(torch_dtype).save_pretrained(backbone_dir)
        tokenizer.save_pretrained(backbone_dir)
        del model  # the Transformer module below loads its own copy; never hold two
        st_model = _sentence_transformer(backbone_dir, run, max_seq_length, torch_dtype, embedding_dim, args)
        st_model.save(str(staging), create_model_card=False)
    finally:
        shutil.rmtree(backbone_dir, ignore_errors=True)
    write_legacy_flags(staging, tokenizer, affixes)
    _verify_tokenizer(staging, tokenizer, affixes)
    return tokenizer, affixes, architecture, embedding_dim


def _sentence_transformer(backbone_dir: Path, run, max_seq_length: int, torch_dtype, embedding_dim: int, args):
    """Transformer -> Pooling -> Normalize (when the run normalised) over the saved backbone, with the prompts."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer

    transformer = Transformer(
        str(backbone_dir),
        max_seq_length=max_seq_length,
        model_kwargs={"dtype": torch_dtype},
        query_length=run.query_max_length,
        # Plain text only: with a chat template, sentence-transformers would otherwise wrap every text in it
        # ("message" modality), which training never did.
        modality_config=TEXT_ONLY_MODALITY,
        module_output_name="token_embeddings",
    )
    modules = [transformer, Pooling(embedding_dim, pooling_mode=run.pooling)]
    if run.normalize:
        modules.append(Normalize())
    else:
        logger.warning("the run did not normalise embeddings; the export has no Normalize module")
    return SentenceTransformer(
        modules=modules,
        device="cpu",
        prompts=build_prompts(args.query_instruction, run.instructed_queries),
        default_prompt_name=None,
        similarity_fn_name="cosine",
    )


def _contract_tokenizer(checkpoint, max_seq_length: int):
    """The checkpoint's tokenizer with a pad token and the EOS contract baked in; returns (tokenizer, affixes)."""
    tokenizer = _load_tokenizer(checkpoint.tokenizer_path)
    ensure_pad_token(tokenizer)
    affixes = bake_eos_contract(tokenizer, append_eos=checkpoint.run_config.append_eos)
    tokenizer.model_max_length = max_seq_length
    return tokenizer, affixes


def _copy_run_files(args: ExportArguments, checkpoint, staging: Path) -> None:
    """The training run's metadata, and with --keep-adapter the LoRA adapter, beside the model."""
    if checkpoint.metadata_path is not None:
        shutil.copy2(checkpoint.metadata_path, staging / RUN_METADATA_FILE)
    if args.keep_adapter:
        (staging / "adapter").mkdir()
        for name in (ADAPTER_CONFIG, *ADAPTER_FILES):
            if (checkpoint.path / name).is_file():
                shutil.copy2(checkpoint.path / name, staging / "adapter" / name)


def _model_card(args, checkpoint, output_dir, tokenizer, affixes, architecture, embedding_dim, evaluation) -> str:
    """README.md of the export, from ``model_card_template.md``."""
    from .. import __version__
    from .model_card import load_eval_settings, render_model_card

    run = checkpoint.run_config
    eval_results, eval_source = evaluation
    prompts = build_prompts(args.query_instruction, run.instructed_queries)
    special = [tokenizer.convert_ids_to_tokens(i) for i in affixes.prefix] + ["$TEXT"]
    special += [tokenizer.convert_ids_to_tokens(i) for i in affixes.suffix]
    return render_model_card(
        model_name=args.model_name or (args.push_to_hub or output_dir.name).split("/")[-1],
        repo_id=args.push_to_hub or str(output_dir),
        base_model=str(checkpoint.base_model or run.base_model_name_or_path or checkpoint.path),
        architecture=architecture,
        run_config=run,
        embedding_dim=embedding_dim,
        max_seq_length=args.max_seq_length or run.max_seq_length,
        dtype=args.dtype,
        query_instruction=args.query_instruction,
        custom_prompt=query_prompt(CUSTOM_INSTRUCTION_EXAMPLE),
        task_prompt_names=[name for name in EVALUATION_INSTRUCTIONS if name in prompts],  # the symmetric tasks
        special_tokens_template=" ".join(special),
        adapter_included=args.keep_adapter,
        is_lora=checkpoint.is_adapter,
        eval_results=eval_results,
        eval_source=str(eval_source) if eval_source else None,
        eval_settings=load_eval_settings(eval_source) if eval_source else None,
        license=args.license,
        version=__version__,
        rope_theta=args.rope_theta if args.rope_theta is not None else run.rope_theta,
        interpolate=args.interpolate,
    )


def _verify_tokenizer(folder: Path, tokenizer, affixes) -> None:
    """Reload the saved tokenizer and check that a plain call adds exactly the contract's special tokens."""
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(str(folder))
    got = default_affixes(reloaded)
    if got != affixes:
        raise E5MistralError(
            f"the exported tokenizer adds {got} instead of {affixes}; this transformers version rewrote the "
            "post-processor on load, please report it"
        )
