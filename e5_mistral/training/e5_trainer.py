"""``E5Trainer``: ``transformers.Trainer`` with the paper's contrastive loss and optional GradCache.

Only hooks are overridden (``compute_loss``, ``training_step`` for GradCache, ``prediction_step``,
``_get_train_sampler``, ``_save``); the training loop, checkpointing, resuming, logging and ``push_to_hub``
are the Trainer's own. ``self.model`` is the backbone itself (or its ``PeftModel``), so saved checkpoints are
plain adapters or models, plus ``e5_mistral_config.json`` for the export stage.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from functools import partial
from typing import Any

import torch
from transformers import Trainer

from ..errors import E5MistralError
from ..pooling import encode
from ..run_metadata import RunMetadata, TrainingHyperparameters
from .collator import E5DataCollator
from .e5_config import E5TrainingConfig
from .gradcache import RandContext
from .length_groups import length_sorted_groups, merge_padded, trim_padding
from .loss import info_nce_loss, matryoshka_info_nce_loss


logger = logging.getLogger(__name__)


class _FixedOrderSampler(torch.utils.data.Sampler):
    """Yields a precomputed index order, recomputed per epoch (for same-dataset global batches)."""

    def __init__(self, make_order, epoch: int = 0):
        self.make_order, self.epoch = make_order, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(self.make_order(self.epoch))

    def __len__(self) -> int:
        return len(self.make_order(self.epoch))


class E5Trainer(Trainer):
    """Trains an embedding model from a decoder LLM as in Wang et al. (2024).

    Args:
        model: an ``AutoModel`` backbone or a ``PeftModel`` wrapping one.
        args: an :class:`E5TrainingConfig`.
        train_dataset / eval_dataset: rows with ``query`` (already instruction-formatted), ``positive``,
            ``negatives`` and ``in_batch_negatives`` (see :func:`e5_mistral.training.data.build_mixture`).
        processing_class: the tokenizer (saved with every checkpoint).
        dataset_infos: what the mixture holds, written to ``e5_mistral_config.json``.
        base_model_name_or_path: recorded in ``e5_mistral_config.json`` (default: from the model config).
        rope_theta: the RoPE base the model was loaded with, when set (recorded, so the export applies it).
    """

    # The loss is a per-batch mean; the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model=None,
        args: E5TrainingConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        dataset_infos=None,
        base_model_name_or_path: str | None = None,
        rope_theta: float | None = None,
        **kwargs,
    ):
        if not isinstance(args, E5TrainingConfig):
            raise TypeError("E5Trainer needs an E5TrainingConfig as args")
        if processing_class is None:
            raise E5MistralError("E5Trainer needs the tokenizer as processing_class")
        if data_collator is None:
            data_collator = E5DataCollator(
                processing_class,
                max_seq_length=args.max_seq_length,
                query_max_length=args.query_max_length,
                num_hard_negatives=args.num_hard_negatives,
                append_eos=args.append_eos,
            )
        self.dataset_infos = [i.to_dict() if hasattr(i, "to_dict") else dict(i) for i in (dataset_infos or [])]
        self.base_model_name_or_path = base_model_name_or_path
        self.rope_theta = rope_theta
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self.model_accepts_loss_kwargs = False
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not self.is_fsdp_enabled:
            # accelerate turns a multi-process CPU launch into MULTI_CPU before it looks at FSDP.
            kind = self.accelerator.distributed_type
            logger.warning(
                "FSDP was requested but accelerate runs %s without it (it shards only on accelerators): "
                "training as plain data parallel",
                getattr(kind, "value", kind),
            )
        if args.gradcache_chunk_size and self.is_deepspeed_enabled:
            raise E5MistralError(
                "gradcache_chunk_size is not supported with DeepSpeed (its engine owns backward); use DDP or FSDP"
            )
        if args.gradient_accumulation_steps > 1 and not args.gradcache_chunk_size:
            logger.warning(
                "gradient_accumulation_steps > 1 does not add negatives to the contrastive batch; "
                "use gradcache_chunk_size to train a large batch in little memory"
            )

    # ---- loss -------------------------------------------------------------------------------------------
    def _encode(self, model, input_ids, attention_mask) -> torch.Tensor:
        return encode(model, input_ids, attention_mask, mode=self.args.pooling, normalize=True)

    def _loss_from_embeddings(self, query, docs, inputs, gather: bool) -> torch.Tensor:
        batch = query.shape[0]
        negatives = docs[batch:] if self.args.num_hard_negatives else None
        if self.args.matryoshka_dims:
            loss = partial(
                matryoshka_info_nce_loss, dims=self.args.matryoshka_dims, weights=self.args.matryoshka_weights
            )
        else:
            loss = info_nce_loss
        return loss(
            query,
            docs[:batch],
            negatives,
            temperature=self.args.temperature,
            negative_mask=inputs["negative_mask"],
            in_batch_negatives=inputs["in_batch_negatives"],
            positive_hash=inputs["positive_hash"],
            negative_hash=inputs["negative_hash"],
            mask_identical_negatives=self.args.mask_identical_negatives,
            false_negative_margin=self.args.false_negative_margin,
            symmetric=self.args.symmetric_loss,
            gather=gather and self.args.gather_across_devices,
        )

    def _step_texts(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every text of the step, queries first then documents, as one padded batch."""
        tokenizer = self.processing_class
        return merge_padded(
            [
                (inputs["query_input_ids"], inputs["query_attention_mask"]),
                (inputs["doc_input_ids"], inputs["doc_attention_mask"]),
            ],
            pad_id=tokenizer.pad_token_id or 0,
            padding_side=getattr(tokenizer, "padding_side", "right"),
        )

    @staticmethod
    def _query_and_docs(sorted_embeddings: torch.Tensor, groups: list[torch.Tensor], inputs: dict[str, Any]):
        """Embeddings encoded in ``groups`` order, back in row order and split into queries and documents."""
        embeddings = sorted_embeddings[torch.argsort(torch.cat(groups))]
        return embeddings.split([inputs["query_input_ids"].shape[0], inputs["doc_input_ids"].shape[0]])

    def compute_loss(self, model, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch=None):
        ids, mask = self._step_texts(inputs)
        groups = length_sorted_groups(mask, math.ceil(ids.shape[0] / self.args.length_groups))
        sorted_embeddings = torch.cat([self._encode(model, *trim_padding(ids[g], mask[g])) for g in groups])
        query, docs = self._query_and_docs(sorted_embeddings, groups, inputs)
        # Gather only while training: evaluation batches may differ in size across processes.
        loss = self._loss_from_embeddings(query, docs, inputs, gather=model.training)
        return (loss, {"query": query, "docs": docs}) if return_outputs else loss

    def training_step(self, model, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        if not self.args.gradcache_chunk_size:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        ids, mask = self._step_texts(inputs)
        # Chunks of texts of similar length (queries and documents mixed), each trimmed to its longest text.
        groups = length_sorted_groups(mask, self.args.gradcache_chunk_size)
        # Pass 1: embed every chunk without a graph, remembering each chunk's RNG state.
        reps, plan = [], []
        with torch.no_grad(), self.compute_loss_context_manager():
            for rows in groups:
                chunk_ids, chunk_mask = trim_padding(ids[rows], mask[rows])
                state = RandContext(chunk_ids.device)
                reps.append(self._encode(model, chunk_ids, chunk_mask).float())
                plan.append((chunk_ids, chunk_mask, state))
        sorted_embeddings = torch.cat(reps).requires_grad_(True)
        query, docs = self._query_and_docs(sorted_embeddings, groups, inputs)
        # Loss and its gradient with respect to the embeddings (cheap: no backbone in the graph).
        with self.compute_loss_context_manager():
            loss = self._loss_from_embeddings(query, docs, inputs, gather=True)
        scaled = loss / self.current_gradient_accumulation_steps
        (grads,) = torch.autograd.grad(scaled, sorted_embeddings)
        # Pass 2: re-embed each chunk with a graph (same dropout) and backpropagate the cached gradient.
        # Gradients are synchronised across processes only with the last chunk.
        start = 0
        for n, (chunk_ids, chunk_mask, state) in enumerate(plan):
            last = n == len(plan) - 1
            sync = contextlib.nullcontext() if last else self.accelerator.no_sync(model)
            with sync, state.replay(), self.compute_loss_context_manager():
                chunk = self._encode(model, chunk_ids, chunk_mask).float()
                surrogate = (chunk * grads[start : start + chunk.shape[0]]).sum()
            self.accelerator.backward(surrogate)
            start += chunk.shape[0]
        return scaled.detach()

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ---- data order -------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.args.same_dataset_batches:
            return super()._get_train_sampler(dataset)
        from .data import same_dataset_order

        global_batch = self.args.per_device_train_batch_size * self.args.world_size
        # the mixture entry, or its family or task (group_batches_by)
        column = "batch_group" if "batch_group" in dataset.column_names else "dataset_id"
        dataset_ids = dataset[column]
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        # Accelerate hands per-device batch j to process j % W, so each run of W*B indices is one global step.
        return _FixedOrderSampler(lambda epoch: same_dataset_order(dataset_ids, global_batch, seed + epoch))

    # ---- saving -----------------------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            self.run_metadata().save(output_dir)

    def run_metadata(self) -> RunMetadata:
        """The run metadata the export stage reads (pooling, EOS, lengths, LoRA, data, hyper-parameters, versions)."""
        import accelerate
        import peft
        import transformers

        from .. import __version__

        try:
            import sentence_transformers

            st_version = sentence_transformers.__version__
        except ImportError:
            st_version = None
        args = self.args
        model = self.accelerator.unwrap_model(self.model)
        peft_config = getattr(model, "peft_config", None)
        lora = None
        base = self.base_model_name_or_path
        if peft_config:
            adapter = next(iter(peft_config.values()))
            lora = {
                "r": adapter.r,
                "lora_alpha": adapter.lora_alpha,
                "lora_dropout": adapter.lora_dropout,
                "target_modules": sorted(adapter.target_modules)
                if not isinstance(adapter.target_modules, str)
                else adapter.target_modules,
            }
            base = base or adapter.base_model_name_or_path
        base = base or getattr(getattr(model, "config", None), "_name_or_path", None)
        return RunMetadata(
            base_model_name_or_path=base,
            pooling=args.pooling,
            normalize=True,
            append_eos=bool(args.append_eos),
            max_seq_length=args.max_seq_length,
            query_max_length=args.query_max_length,
            temperature=args.temperature,
            matryoshka_dims=args.matryoshka_dims,
            rope_theta=self.rope_theta,
            instructed_queries=any(info.get("instructed_queries", True) for info in self.dataset_infos)
            or not self.dataset_infos,
            lora=lora,
            datasets=self.dataset_infos,
            training=TrainingHyperparameters.from_training_args(args),
            versions={
                "transformers": transformers.__version__,
                "peft": peft.__version__,
                "accelerate": accelerate.__version__,
                "torch": torch.__version__,
                "sentence_transformers": st_version,
                "e5_mistral": __version__,
            },
        )
