"""``EndpointArguments``: how to reach an OpenAI-compatible endpoint and what a run may spend there.

Synthesis extends it (``SynthesisArguments``); the mining judge takes the same fields with a ``judge_`` prefix
(:func:`prefixed`), so both stages talk to an LLM with one set of options and one set of checks.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import typing
from dataclasses import asdict, dataclass
from typing import ClassVar, Optional
from urllib.parse import urlparse

from ..errors import E5MistralError
from ..options import option
from .formats import RESPONSE_FORMATS


BACKENDS = ("online", "batch", "vllm-batch")
HTTP_CLIENTS = ("auto", "aiohttp", "httpx")
MAX_TOKENS_PARAMS = ("auto", "max_tokens", "max_completion_tokens")
# OpenAI's reasoning models answer 400 to max_tokens and take max_completion_tokens.
REASONING_MODELS = re.compile(r"^(o\d|gpt-5)", re.IGNORECASE)


@dataclass
class EndpointArguments:
    # how this stage's flags are named: "" for generate's --model, "judge-" for mine's --judge-model
    flag_prefix: ClassVar[str] = ""

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
    max_tokens: int = option("max completion tokens per request; a cut answer is rejected as `truncated`", 4096)
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
    max_attempts: int = option("attempts per request before it is journaled as failed (retried by the next run)", 6)
    retry_refused: bool = option(
        "send again the requests the endpoint refused with a non-retryable 4xx (by default a rerun leaves them refused)",
        False,
    )
    timeout: float = option("seconds before one attempt times out", 600.0)
    retry_initial_wait: float = option("first backoff in seconds (exponential with jitter; Retry-After wins)", 1.0)
    retry_max_wait: float = option("longest backoff in seconds", 60.0)
    backend: str = option(
        "online (concurrent requests), batch (OpenAI Batch API, 50%% cheaper) or vllm-batch (files for "
        "`vllm run-batch`: a run writes them and prints the commands, the next imports the answers)",
        "online",
    )
    batch_no_wait: bool = option("batch backend: submit and return; rerun later to collect", False)
    batch_poll_interval: float = option("batch backend: seconds between status polls", 30.0)

    def __post_init__(self):
        for name, allowed in (
            ("backend", BACKENDS),
            ("response_format", RESPONSE_FORMATS),
            ("max_tokens_param", MAX_TOKENS_PARAMS),
            ("http_client", HTTP_CLIENTS),
        ):
            if getattr(self, name) not in allowed:
                raise E5MistralError(
                    f"{self.flag(name)} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}"
                )
        for name in ("concurrency", "max_attempts", "max_tokens"):
            if getattr(self, name) < 1:
                raise E5MistralError(f"{self.flag(name)} must be >= 1, got {getattr(self, name)}")
        if self.extra_body is not None:
            check_json_object(self.flag("extra_body"), self.extra_body)

    def flag(self, name: str) -> str:
        """The command-line flag of field ``name`` in this stage (``--max-cost`` or ``--judge-max-cost``)."""
        return f"--{self.flag_prefix}{name.replace('_', '-')}"

    def check_endpoint(self) -> None:
        """What a run needs beyond each flag's own checks: a model, an Azure endpoint, a price for --max-cost, a key."""
        from .cost import load_price_table, price_for

        if not self.model:
            raise E5MistralError(f"{self.flag('model')} is required")
        if self.azure_api_version and not self.base_url:
            raise E5MistralError(
                f"{self.flag('azure_api_version')} needs {self.flag('base_url')} (the Azure endpoint)"
            )
        if self.max_cost is not None and price_for(load_price_table(self.price_table), self.model) is None:
            raise E5MistralError(
                f"{self.flag('max_cost')} needs a price for model {self.model!r} in {self.flag('price_table')}"
            )

    def request_params(
        self,
        sampling: dict,
        response_format: str = "none",
        max_tokens_param: str | None = None,
        default_sampling: bool = False,
        model: str | None = None,
    ) -> dict:
        """The parameters of every request (part of its id; never the key or the URL): the model (``model``, else
        ``--model``), ``sampling``
        (the stage's temperature and top_p; none sent when ``default_sampling``: the model takes only its defaults,
        as OpenAI's reasoning models), the completion cap under its resolved name, the resolved response format
        (only when one is used) and the extra body."""
        cap = max_tokens_param or self.default_max_tokens_param(model)
        params = {"model": model or self.model, **({} if default_sampling else sampling), cap: self.max_tokens}
        if response_format != "none":
            params["response_format"] = response_format
        if self.extra_body:
            params["extra_body"] = json.loads(self.extra_body)
        return params

    def default_max_tokens_param(self, model: str | None = None) -> str:
        """The cap's parameter before the endpoint says otherwise: by name for models known to refuse max_tokens."""
        if self.max_tokens_param != "auto":
            return self.max_tokens_param
        return "max_completion_tokens" if is_reasoning_model(model or self.model) else "max_tokens"

    def api_key(self) -> str:
        """The key from ``api_key_env``; loopback endpoints (vLLM, transformers serve) accept any key."""
        key = os.environ.get(self.api_key_env)
        if key:
            return key
        if is_loopback(self.base_url):
            return "EMPTY"
        raise E5MistralError(
            f"no API key: set the environment variable {self.api_key_env} (or choose another with "
            f"{self.flag('api_key_env')})"
        )

    def public_dict(self) -> dict:
        """Settings safe to write to disk and cards (the key is never a field, only its variable's name)."""
        return asdict(self)


def is_reasoning_model(model: str | None) -> bool:
    """OpenAI's reasoning models, by name: they take max_completion_tokens and only their default sampling."""
    return bool(REASONING_MODELS.match(model or ""))


def check_json_object(flag: str, value: str) -> dict:
    """``value`` parsed, or a one-line error naming ``flag`` when it is not a JSON object."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise E5MistralError(f"{flag} is not valid JSON: {err}") from None
    if not isinstance(parsed, dict):
        raise E5MistralError(f"{flag} must be a JSON object")
    return parsed


def is_loopback(url: str | None) -> bool:
    host = urlparse(url or "").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def prefixed(
    prefix: str, group: str, defaults: dict, helps: dict | None = None, exclude: tuple[str, ...] = (), doc: str = ""
) -> type:
    """``EndpointArguments`` as the options of another stage's LLM: every field named ``{prefix}_{name}`` (the
    flags ``--{prefix}-{name}``), listed under ``group`` in --help, with the stage's own ``defaults`` and help texts.
    ``endpoint()`` gives back the settings as ``EndpointArguments``, whose errors name the prefixed flags."""
    hints = typing.get_type_hints(EndpointArguments)
    specs = [f for f in dataclasses.fields(EndpointArguments) if f.name not in exclude]
    new_fields = [
        (
            f"{prefix}_{f.name}",
            hints[f.name],
            dataclasses.field(
                default=defaults.get(f.name, f.default),
                metadata={**f.metadata, **({"help": helps[f.name]} if f.name in (helps or {}) else {})},
            ),
        )
        for f in specs
    ]
    settings_class = type(f"{prefix.title()}EndpointArguments", (EndpointArguments,), {"flag_prefix": f"{prefix}-"})
    settings_class = dataclass(settings_class)

    def endpoint(self) -> EndpointArguments:
        return settings_class(**{f.name: getattr(self, f"{prefix}_{f.name}") for f in specs})

    namespace = {"endpoint": endpoint, "__doc__": doc, "HELP_GROUPS": {group: tuple(n for n, _, _ in new_fields)}}
    return dataclasses.make_dataclass(f"{prefix.title()}Arguments", new_fields, namespace=namespace)
