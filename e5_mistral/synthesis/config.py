"""``SynthesisArguments``: every setting of a synthesis run (CLI flags, builder config and library calls)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass
from typing import ClassVar, Optional
from urllib.parse import urlparse

from ..errors import E5MistralError
from ..options import option
from .plan import BRAINSTORM_REASKS
from .structured import RESPONSE_FORMATS
from .templates import FAMILIES


MAX_TOKENS_PARAMS = ("auto", "max_tokens", "max_completion_tokens")
# OpenAI's reasoning models answer 400 to max_tokens and take max_completion_tokens.
REASONING_MODELS = re.compile(r"^(o\d|gpt-5)", re.IGNORECASE)


@dataclass
class SynthesisArguments:
    # --help lists the options in these groups, in this order: what a first run needs comes first.
    HELP_GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "endpoint": (
            "model",
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

    model: Optional[str] = option("model name sent to the endpoint (for `transformers serve`: the served path)", None)
    base_url: Optional[str] = option(
        "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (default: the OpenAI API)", None
    )
    api_key_env: str = option(
        "environment variable that holds the API key (loopback endpoints default to 'EMPTY')", "OPENAI_API_KEY"
    )
    azure_api_version: Optional[str] = option(
        "use Azure OpenAI with this api-version; --base-url is the azure_endpoint", None
    )
    response_format: str = option(
        "JSON schema enforcement: auto (ask the endpoint once which shape it enforces), json_schema (OpenAI, vLLM, "
        "SGLang, llama.cpp), json_object (llama.cpp's json_object + schema) or none",
        "auto",
    )
    max_tokens_param: str = option(
        "how the completion cap is sent: auto (max_completion_tokens for models that require it, e.g. o1/o3/o4/gpt-5, or "
        "after a 400 that names max_tokens), max_tokens or max_completion_tokens",
        "auto",
    )
    extra_body: Optional[str] = option(
        "JSON object merged into every request body (e.g. transformers serve's generation_config)", None
    )
    http_client: str = option(
        "HTTP transport of the online backend: auto (aiohttp when installed, else httpx), aiohttp or httpx", "auto"
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
    max_tokens: int = option("max completion tokens per request; a cut answer is rejected as `truncated`", 4096)
    sampling_seed: Optional[int] = option(
        "make sampling repeatable on servers that honour `seed` (OpenAI best-effort, vLLM, llama.cpp): each request "
        "is sent its own seed, derived from this one and the request; changes the request ids",
        None,
    )
    concurrency: int = option("requests in flight at once", 16)
    rpm: Optional[float] = option(
        "requests per minute limit (the server's x-ratelimit-* headers are honoured with or without it)", None
    )
    tpm: Optional[float] = option(
        "tokens per minute limit: each request counts its prompt estimate when sent, then its real usage", None
    )
    price_table: Optional[str] = option(
        'JSON (or a JSON file) of USD per 1M tokens: {"MODEL": {"input": 0.15, "output": 0.6}}', None
    )
    max_cost: Optional[float] = option(
        "stop sending new requests at this estimated cost in USD (needs --price-table)", None
    )
    max_total_tokens: Optional[int] = option(
        "stop sending new requests after this many prompt+completion tokens", None
    )
    dry_run: bool = option(
        "print what the requests still to send can cost at most (tokens, and USD with --price-table) and send none",
        False,
    )
    max_attempts: int = option("attempts per request before it is journaled as failed (retried by the next run)", 6)
    retry_refused: bool = option(
        "send again the requests the endpoint refused with a non-retryable 4xx (by default a rerun leaves them refused)",
        False,
    )
    timeout: float = option("seconds before one attempt times out", 600.0)
    retry_initial_wait: float = option("first backoff in seconds (exponential with jitter; Retry-After wins)", 1.0)
    retry_max_wait: float = option("longest backoff in seconds", 60.0)
    generator_license: Optional[str] = option(
        "the generator model's licence notice, stated on the dataset card (e.g. 'Qwen2.5-Coder: Apache-2.0')", None
    )
    push_to_hub: Optional[str] = option("push the dataset to this Hub repo id", None)
    push_partial: bool = option("with --push-to-hub: push even when the run is unfinished (failures, budget)", False)
    private: bool = option("make the Hub repo private", False)
    no_progress: bool = option("hide the progress bar", False)
    backend: str = option("online (concurrent requests) or batch (OpenAI Batch API, 50%% cheaper)", "online")
    batch_no_wait: bool = option("batch backend: submit and return; rerun later to collect", False)
    batch_poll_interval: float = option("batch backend: seconds between status polls", 30.0)

    def __post_init__(self):
        if self.families is not None and len(self.families) == 1 and "," in self.families[0]:
            self.families = [f.strip() for f in self.families[0].split(",") if f.strip()]
        for family in self.families or ():
            if family not in FAMILIES:
                raise E5MistralError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
        if self.backend not in ("online", "batch"):
            raise E5MistralError(f"--backend must be online or batch, not {self.backend!r}")
        if self.response_format not in RESPONSE_FORMATS:
            raise E5MistralError(
                f"--response-format must be one of {', '.join(RESPONSE_FORMATS)}, not {self.response_format!r}"
            )
        if self.max_tokens_param not in MAX_TOKENS_PARAMS:
            raise E5MistralError(
                f"--max-tokens-param must be one of {', '.join(MAX_TOKENS_PARAMS)}, not {self.max_tokens_param!r}"
            )
        if self.http_client not in ("auto", "aiohttp", "httpx"):
            raise E5MistralError(f"--http-client must be auto, aiohttp or httpx, not {self.http_client!r}")
        if self.dedup_tasks not in ("none", "minhash", "semantic"):
            raise E5MistralError(f"--dedup-tasks must be none, minhash or semantic, not {self.dedup_tasks!r}")
        if self.brainstorm_reasks is not None and self.brainstorm_reasks < 0:
            raise E5MistralError(f"--brainstorm-reasks must be >= 0, got {self.brainstorm_reasks}")
        if self.num_examples < 0 or self.concurrency < 1 or self.max_attempts < 1 or self.max_tokens < 1:
            raise E5MistralError("--num-examples must be >= 0 and --concurrency, --max-attempts, --max-tokens >= 1")
        for name in ("extra_body", "family_mix"):
            value = getattr(self, name)
            if value is not None:
                try:
                    parsed = json.loads(value)
                except json.JSONDecodeError as err:
                    raise E5MistralError(f"--{name.replace('_', '-')} is not valid JSON: {err}") from None
                if not isinstance(parsed, dict):
                    raise E5MistralError(f"--{name.replace('_', '-')} must be a JSON object")

    def check_runnable(self) -> None:
        """The checks a run needs beyond each flag's own (``__post_init__``): every argument check lives in this
        class, so the command line, the builder and library calls refuse the same things."""
        from .cost import load_price_table, price_for
        from .plan import family_counts, resolve_languages, resolve_mix

        if not self.output:
            raise E5MistralError("--output is required")
        if not self.model:
            raise E5MistralError("--model is required")
        if self.azure_api_version and not self.base_url:
            raise E5MistralError("--azure-api-version needs --base-url (the Azure endpoint)")
        counts = family_counts(self.num_examples, resolve_mix(self.families, self.family_mix))
        languages = resolve_languages(self.languages)  # an unknown language fails here, with the other flags
        if counts.get("bitext") and len(languages) < 2:
            raise E5MistralError("bitext needs at least two languages (source and target must differ)")
        if self.max_cost is not None and price_for(load_price_table(self.price_table), self.model) is None:
            raise E5MistralError(f"--max-cost needs a price for model {self.model!r} in --price-table")

    def reask_limit(self) -> int:
        """Re-asks per brainstorm call: greedy decoding answers a re-ask exactly as before, so none by default."""
        if self.brainstorm_reasks is not None:
            return self.brainstorm_reasks
        return 0 if self.temperature == 0 else BRAINSTORM_REASKS

    def generation_params(
        self, response_format: str = "none", max_tokens_param: str | None = None, default_sampling: bool = False
    ) -> dict:
        """The request parameters that go into every request id (never the key or the URL).

        ``response_format`` and ``max_tokens_param`` are the resolved ones (never ``auto``); a schema and the name
        ``max_completion_tokens`` change the ids only when used, so journals written without them still resume.
        ``default_sampling``: the model takes only its default temperature and top_p (OpenAI's reasoning models),
        so neither is sent.
        """
        cap = max_tokens_param or self.default_max_tokens_param()
        sampling = {} if default_sampling else {"temperature": self.temperature, "top_p": self.top_p}
        params = {"model": self.model, **sampling, cap: self.max_tokens}
        if response_format != "none":
            params["response_format"] = response_format
        if self.extra_body:
            params["extra_body"] = json.loads(self.extra_body)
        if self.sampling_seed is not None:  # only when set, as the system prompt
            params["sampling_seed"] = self.sampling_seed
        if self.system_prompt:  # only when set, so the ids of runs without one stay as they were
            params["system_prompt"] = self.system_prompt
        return params

    def default_max_tokens_param(self) -> str:
        """The cap's parameter before the endpoint says otherwise: by name for models known to refuse max_tokens."""
        if self.max_tokens_param != "auto":
            return self.max_tokens_param
        return "max_completion_tokens" if REASONING_MODELS.match(self.model or "") else "max_tokens"

    def api_key(self) -> str:
        """The key from ``api_key_env``; loopback endpoints (vLLM, transformers serve) accept any key."""
        key = os.environ.get(self.api_key_env)
        if key:
            return key
        if is_loopback(self.base_url):
            return "EMPTY"
        raise E5MistralError(
            f"no API key: set the environment variable {self.api_key_env} (or choose another with --api-key-env)"
        )

    def public_dict(self) -> dict:
        """Settings safe to write to disk and cards (the key is never a field, only its variable's name)."""
        return asdict(self)


def is_loopback(url: str | None) -> bool:
    host = urlparse(url or "").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
