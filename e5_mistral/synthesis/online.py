"""The online backend: ``AsyncOpenAI`` chat completions, concurrent, rate-limited, retried, journaled.

* Concurrency: a fixed pool of workers (no task per request, so 500k plans stay cheap).
* Rate limits: optional ``aiolimiter`` buckets for requests and tokens per minute.
* Retries: ``tenacity`` with exponential backoff and jitter, honouring ``Retry-After``, on 408/409/429/5xx,
  timeouts and connection errors only; the openai client's own retries are off so the layers never multiply.
  After ``max_attempts`` the request is journaled as failed and retried by the next run.
* Fatal answers (401, 403, 404) stop the whole run with one clear error; requests in flight still finish
  and are journaled. Any other 4xx is about the request itself: it is journaled as ``refused`` with the
  server's reason, and a rerun does not send it again unless asked (``--retry-refused``).
* CPU per request is what limits a single process at high concurrency, so requests go through the client's
  generic ``post`` (the body is ours already, and the answer is kept as plain JSON: no per-request
  pydantic transform or model), over aiohttp when it is installed (see :func:`make_http_client`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Sequence

import openai
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter
from tenacity.wait import wait_base

from ..errors import E5MistralError
from .cost import Budget
from .journal import STATUS_FAILED, STATUS_OK, STATUS_REFUSED, Journal, Request, make_record


logger = logging.getLogger(__name__)

HTTP_CLIENTS = ("auto", "aiohttp", "httpx")
FATAL_STATUS = {
    401: "the endpoint rejected the API key",
    403: "the endpoint refused access",
    404: "the endpoint or model was not found",
}


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    return isinstance(exc, openai.APIStatusError) and (exc.status_code in (408, 409, 429) or exc.status_code >= 500)


class wait_retry_after(wait_base):
    """The server's ``Retry-After`` (seconds) when it sent one, else the fallback backoff."""

    def __init__(self, fallback: wait_base, maximum: float):
        self.fallback, self.maximum = fallback, maximum

    def __call__(self, retry_state) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        response = getattr(exc, "response", None)
        header = response.headers.get("retry-after") if response is not None else None
        try:
            return min(max(float(header), 0.0), self.maximum)
        except (TypeError, ValueError):  # absent, or an HTTP date: use our own backoff
            return self.fallback(retry_state)


class EndpointError(E5MistralError, RuntimeError):
    """A problem with the endpoint or configuration that no retry can fix."""


async def check_reachable(client: openai.AsyncOpenAI, endpoint: str) -> None:
    """Fail fast when nothing answers at the base URL; any HTTP answer (even 404) means it is reachable."""
    try:
        await client.models.list()
    except openai.APIConnectionError as err:
        raise EndpointError(f"cannot reach the endpoint {endpoint} ({type(err).__name__}: {err})") from None
    except openai.APIStatusError as err:
        if err.status_code == 401:
            raise EndpointError(f"{FATAL_STATUS[401]} (HTTP 401 from {endpoint})") from None


def make_http_client(kind: str = "auto"):
    """The ``http_client`` for ``AsyncOpenAI``: ``None`` (the client's default httpx transport) or aiohttp.

    aiohttp needs about half the CPU per request of httpx, which decides throughput at high concurrency.
    ``auto`` takes aiohttp when it is installed (``pip install 'openai[aiohttp]'``) and httpx otherwise.
    """
    if kind not in HTTP_CLIENTS:
        raise E5MistralError(f"--http-client must be one of {', '.join(HTTP_CLIENTS)}, not {kind!r}")
    if kind == "httpx":
        return None
    try:
        return openai.DefaultAioHttpClient()
    except RuntimeError:  # openai's placeholder when the aiohttp extra is missing
        if kind == "aiohttp":
            raise E5MistralError(
                "--http-client aiohttp needs the aiohttp package: pip install 'openai[aiohttp]'"
            ) from None
        return None


class OnlineBackend:
    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        concurrency: int = 16,
        rpm: float | None = None,
        tpm: float | None = None,
        max_attempts: int = 6,
        initial_wait: float = 1.0,
        max_wait: float = 60.0,
        budget: Budget | None = None,
        endpoint: str = "",
    ):
        if concurrency < 1 or max_attempts < 1:
            raise E5MistralError("concurrency and max_attempts must be >= 1")
        self.client, self.concurrency, self.max_attempts = client, concurrency, max_attempts
        self.request_limiter = AsyncLimiter(rpm, 60) if rpm else None
        self.token_limiter = AsyncLimiter(tpm, 60) if tpm else None
        self.tpm = tpm
        self.wait = wait_retry_after(wait_exponential_jitter(initial=initial_wait, max=max_wait), max_wait)
        self.budget = budget
        self.endpoint = endpoint or str(client.base_url)
        self.stopped_by_budget = False
        self.running = 0  # the Backend interface: no batches here
        self._in_flight = 0
        self._fatal: BaseException | None = None
        self._connection_failures = 0  # consecutive requests that failed for connection reasons only

    async def check_endpoint(self) -> None:
        await check_reachable(self.client, self.endpoint)

    async def run(self, requests: Sequence[Request], journal: Journal) -> None:
        pending = iter(requests)

        async def worker() -> None:
            while self._fatal is None:
                if self.budget is not None and not self.budget.allows(self._in_flight):
                    self.stopped_by_budget = True
                    return
                request = next(pending, None)
                if request is None:
                    return
                self._in_flight += 1
                try:
                    record = await self._answer(request)
                except EndpointError as err:
                    self._fatal = err
                    return
                finally:
                    self._in_flight -= 1
                journal.append(record)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        if self._fatal is not None:
            raise self._fatal

    def _estimated_tokens(self, request: Request) -> float:
        prompt = sum(len(m["content"]) for m in request.messages) / 4
        return min(prompt + float(request.params.get("max_tokens") or 0), float(self.tpm or 0))

    async def post(self, body: dict):
        """One chat completion, as sent by every request of the plan."""
        return await self.client.post(
            "/chat/completions", body=body, cast_to=object, options={"security": {"bearer_auth": True}}
        )

    async def retry_rate_limits(self, send, body: dict):
        """``await send(body)``, retried only on rate limits (408/409/429) and connection errors: any other status
        is an answer about the request (the structured-output probe reads it as such)."""

        def transient(exc: BaseException) -> bool:
            return isinstance(exc, openai.APIConnectionError) or (
                isinstance(exc, openai.APIStatusError) and exc.status_code in (408, 409, 429)
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self.wait,
            retry=retry_if_exception(transient),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await send(body)

    async def _create(self, request: Request):
        if self.request_limiter is not None:
            await self.request_limiter.acquire()
        if self.token_limiter is not None:
            await self.token_limiter.acquire(self._estimated_tokens(request))
        # The documented raw route of the client (same auth, base URL, Azure deployment paths, timeouts and
        # error classes as chat.completions.create); cast_to=object returns the decoded JSON untouched.
        return await self.post(request.body())

    async def _answer(self, request: Request) -> dict:
        attempts = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self.wait,
            retry=retry_if_exception(is_retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    response = await self._create(request)
        except openai.APIStatusError as err:
            if err.status_code in FATAL_STATUS:
                raise EndpointError(
                    f"{FATAL_STATUS[err.status_code]} (HTTP {err.status_code} from {self.endpoint}): {err.message}"
                ) from None
            if not is_retryable(err):  # a 4xx about this request: asking again gets the same answer
                return make_record(
                    request,
                    STATUS_REFUSED,
                    attempts=attempts,
                    error=f"HTTP {err.status_code}: {' '.join(str(err.message).split())}"[:500],
                )
            return self._failed(request, err, attempts)
        except openai.APIConnectionError as err:
            self._connection_failures += 1
            if self._connection_failures >= max(5, self.concurrency):
                raise EndpointError(
                    f"the endpoint {self.endpoint} stopped answering ({self._connection_failures} "
                    f"requests in a row failed to connect); rerun to resume"
                ) from None
            return self._failed(request, err, attempts)
        self._connection_failures = 0
        if not isinstance(response, dict):  # a 200 whose body is not a JSON object: the next run asks again
            return self._failed(
                request, ValueError(f"the answer is not a JSON object: {str(response)[:200]!r}"), attempts
            )
        choices = response.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        usage = response.get("usage") if isinstance(response.get("usage"), dict) else None
        return make_record(
            request,
            STATUS_OK,
            content=message.get("content"),
            finish_reason=choice.get("finish_reason"),
            usage={
                "prompt_tokens": usage.get("prompt_tokens") or 0,
                "completion_tokens": usage.get("completion_tokens") or 0,
            }
            if usage
            else None,
            attempts=attempts,
        )

    def _failed(self, request: Request, err: BaseException, attempts: int) -> dict:
        logger.debug("request %s failed after %d attempts: %s", request.request_id[:12], attempts, err)
        return make_record(request, STATUS_FAILED, error=f"{type(err).__name__}: {err}"[:500], attempts=attempts)
