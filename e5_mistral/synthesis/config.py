"""``SynthesisArguments``: every setting of a synthesis run (CLI flags, builder config and library calls): the
endpoint's (:class:`e5_mistral.llm.settings.EndpointArguments`) and what to generate."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Optional

from ..errors import E5MistralError
from ..llm.settings import EndpointArguments, check_json_object
from ..options import option
from .plan import BRAINSTORM_REASKS
from .templates import FAMILIES


@dataclass
class SynthesisArguments(EndpointArguments):
    # --help lists the options in these groups, in this order: what a first run needs comes first.
    HELP_GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "endpoint": (
            "model",
            "generator_mix",
            "base_url",
            "api_key_env",
            "azure_api_version",
            "response_format",
            "max_tokens_param",
            "extra_body",
            "http_client",
        ),
        "what to generate": (
            "output",
            "num_examples",
            "families",
            "family_mix",
            "languages",
            "seed",
            "examples_per_task",
            "brainstorm_reasks",
            "system_prompt",
            "accept_text_task_lists",
            "dedup_tasks",
            "dedup_model",
            "dedup_threshold",
        ),
        "sampling": (
            "temperature",
            "top_p",
            "max_tokens",
            "sampling_seed",
        ),
        "limits and budget": (
            "concurrency",
            "rpm",
            "tpm",
            "price_table",
            "max_cost",
            "max_total_tokens",
            "dry_run",
            "max_attempts",
            "retry_refused",
            "timeout",
            "retry_initial_wait",
            "retry_max_wait",
        ),
        "output and Hub": (
            "generator_license",
            "push_to_hub",
            "push_partial",
            "private",
            "no_progress",
        ),
        "batch": (
            "backend",
            "batch_no_wait",
            "batch_poll_interval",
        ),
    }

    generator_mix: Optional[str] = option(
        'several generators in one dataset: JSON object model -> weight, e.g. {"gpt-4o": 0.75, "gpt-4o-mini": 0.25} '
        "(the paper's GPT-4 / GPT-3.5 mix); each request's model is drawn from it, seeded, and is part of its id; "
        "--model is the one the endpoint's format is probed with",
        None,
    )
    output: Optional[str] = option(
        "output folder: journal, report.json, rejected.jsonl, diversity.json, dataset/", None
    )
    num_examples: int = option("number of examples to plan over all families", 100)
    families: Optional[list[str]] = option(f"families to generate (default: all of {' '.join(FAMILIES)})", None)
    family_mix: Optional[str] = option(
        "JSON object family -> weight (default: the paper's counts 167/122/99/89/17/13k)", None
    )
    languages: Optional[list[str]] = option(
        "language names (uniform over them) or one JSON object name -> weight (default: the paper's Figure 2 "
        "weights over 93 XLM-R languages)",
        None,
    )
    seed: int = option("seed of the plan: the same seed gives the same slots, languages and request ids", 42)
    examples_per_task: float = option("brainstorm enough ~20-task lists that each task is used about this often", 3.0)
    brainstorm_reasks: Optional[int] = option(
        "times an unusable task list is asked for again (default: 3, or 0 at --temperature 0, where it would come "
        "back the same)",
        None,
    )
    system_prompt: Optional[str] = option(
        "a system message sent before every prompt (e.g. 'You only answer with valid JSON.'); changes the request ids",
        None,
    )
    accept_text_task_lists: bool = option(
        "also accept a brainstorm answer written as a plain-text list ('- task', '1. task'), not only a JSON list; "
        "for small local models (the paper's strict parsing is the default)",
        False,
    )
    dedup_tasks: str = option("extra dedup of brainstormed tasks: none, minhash or semantic", "none")
    dedup_model: Optional[str] = option(
        "embedding model for --dedup-tasks semantic (default: the bundled all-MiniLM-L6-v2)", None
    )
    dedup_threshold: Optional[float] = option(
        "similarity threshold for --dedup-tasks (default: 0.8 minhash, 0.9 semantic)", None
    )
    temperature: float = option("sampling temperature (paper: 1.0)", 1.0)
    top_p: float = option("nucleus sampling top_p (paper: 1.0)", 1.0)
    sampling_seed: Optional[int] = option(
        "make sampling repeatable on servers that honour `seed` (OpenAI best-effort, vLLM, llama.cpp): each request "
        "is sent its own seed, derived from this one and the request; changes the request ids",
        None,
    )
    dry_run: bool = option(
        "print what the requests still to send can cost at most (tokens, and USD with --price-table) and send none",
        False,
    )
    generator_license: Optional[str] = option(
        "the generator model's licence notice, stated on the dataset card (e.g. 'Qwen2.5-Coder: Apache-2.0')", None
    )
    push_to_hub: Optional[str] = option("push the dataset to this Hub repo id", None)
    push_partial: bool = option("with --push-to-hub: push even when the run is unfinished (failures, budget)", False)
    private: bool = option("make the Hub repo private", False)
    no_progress: bool = option("hide the progress bar", False)

    def __post_init__(self):
        super().__post_init__()
        if self.families is not None and len(self.families) == 1 and "," in self.families[0]:
            self.families = [f.strip() for f in self.families[0].split(",") if f.strip()]
        for family in self.families or ():
            if family not in FAMILIES:
                raise E5MistralError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
        if self.dedup_tasks not in ("none", "minhash", "semantic"):
            raise E5MistralError(f"--dedup-tasks must be none, minhash or semantic, not {self.dedup_tasks!r}")
        if self.brainstorm_reasks is not None and self.brainstorm_reasks < 0:
            raise E5MistralError(f"--brainstorm-reasks must be >= 0, got {self.brainstorm_reasks}")
        if self.num_examples < 0:
            raise E5MistralError("--num-examples must be >= 0")
        if self.family_mix is not None:
            check_json_object("--family-mix", self.family_mix)
        if self.generator_mix is not None:
            mix = check_json_object("--generator-mix", self.generator_mix)
            if not mix or any(not isinstance(w, (int, float)) or w < 0 for w in mix.values()) or not sum(mix.values()):
                raise E5MistralError(f"--generator-mix must give models non-negative weights, some positive: {mix}")

    def generators(self) -> dict[str, float]:
        """model -> weight of the requests (``--model`` alone without ``--generator-mix``)."""
        if self.generator_mix is None:
            return {self.model: 1.0}
        return {model: float(w) for model, w in json.loads(self.generator_mix).items() if w > 0}

    def check_runnable(self) -> None:
        """The checks a run needs beyond each flag's own (``__post_init__``): every argument check lives in this
        class and its base, so the command line, the builder and library calls refuse the same things."""
        from .plan import family_counts, resolve_languages, resolve_mix

        if not self.output:
            raise E5MistralError("--output is required")
        self.check_endpoint()
        if self.max_cost is not None:
            from ..llm.cost import load_price_table, price_for

            prices = load_price_table(self.price_table)
            for model in self.generators():
                if price_for(prices, model) is None:
                    raise E5MistralError(f"--max-cost needs a price for model {model!r} in --price-table")
        counts = family_counts(self.num_examples, resolve_mix(self.families, self.family_mix))
        languages = resolve_languages(self.languages)  # an unknown language fails here, with the other flags
        if counts.get("bitext") and len(languages) < 2:
            raise E5MistralError("bitext needs at least two languages (source and target must differ)")

    def reask_limit(self) -> int:
        """Re-asks per brainstorm call: greedy decoding answers a re-ask exactly as before, so none by default."""
        if self.brainstorm_reasks is not None:
            return self.brainstorm_reasks
        return 0 if self.temperature == 0 else BRAINSTORM_REASKS

    def sampling(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p}

    def generation_params(
        self,
        response_format: str = "none",
        max_tokens_param: str | None = None,
        default_sampling: bool = False,
        model: str | None = None,
    ) -> dict:
        """The request parameters that go into every request id (never the key or the URL).

        ``response_format`` and ``max_tokens_param`` are the resolved ones (never ``auto``); a schema and the name
        ``max_completion_tokens`` change the ids only when used, so journals written without them still resume.
        ``default_sampling``: the model takes only its default temperature and top_p (OpenAI's reasoning models),
        so neither is sent.
        """
        params = self.request_params(self.sampling(), response_format, max_tokens_param, default_sampling, model)
        if self.sampling_seed is not None:  # only when set, as the system prompt
            params["sampling_seed"] = self.sampling_seed
        if self.system_prompt:  # only when set, so the ids of runs without one stay as they were
            params["system_prompt"] = self.system_prompt
        return params
