"""The online backend: ``AsyncOpenAI`` chat completions, concurrent, rate-limited, retried, journaled.

* Concurrency: a fixed pool of workers (no task per request, so 500k plans stay cheap).
* Rate limits: optional ``aiolimiter`` buckets for requests and tokens per minute (``--rpm``/``--tpm``); the token
  bucket takes each request's expected tokens before it is sent and what its real usage adds once answered. The
  server's own ``x-ratelimit-remaining-*``/``x-ratelimit-reset-*`` headers pause sending until the window resets.
* Retries: ``tenacity`` with exponential backoff and jitter, on what the openai client retries (408/409/429/5xx,
  timeouts and connection errors, and whatever ``x-should-retry`` says), waiting what the server asked for
  (``retry-after-ms``, ``Retry-After`` in seconds or as an HTTP date), as the openai client reads those headers;
  its own retries are off so the layers never multiply. After ``max_attempts`` the request is journaled as failed
  and retried by the next run.
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
import math
import re
import time
from typing import Mapping, Sequence

import openai
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter
from tenacity.wait import wait_base

from ..compat import (
    OPENAI_MAX_RETRY_AFTER_DELAY,
    OPENAI_RAW_RESPONSE_HEADER,
    openai_retry_after,
    openai_should_retry,
)
from ..errors import E5MistralError
from .cost import Budget, worst_case_cost
from .journal import STATUS_FAILED, STATUS_OK, STATUS_REFUSED, Journal, Request, make_record
from .settings import HTTP_CLIENTS


logger = logging.getLogger(__name__)

FATAL_STATUS = {
    401: "the endpoint rejected the API key",
    403: "the endpoint refused access",
    404: "the endpoint or model was not found",
}


TRANSIENT_STATUS = (408, 409, 429)  # never about the request itself, even when the server says not to retry
# The first this many answers of a run all refused with the same error: a setting of the run is wrong (an unsupported
# parameter, a bad --extra-body), not the requests, so the run stops instead of refusing its plan one by one.
REFUSAL_BREAKER = 20
RATE_WINDOW_S = 60.0  # --rpm and --tpm are per minute
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def is_retryable(client: openai.AsyncOpenAI, exc: BaseException) -> bool:
    """What the openai client would retry: connection errors and timeouts, and the statuses its ``_should_retry``
    takes (408, 409, 429, 5xx; ``x-should-retry`` overrides; a server delay over two minutes is not waited for)."""
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    return isinstance(exc, openai.APIStatusError) and openai_should_retry(client, exc.response)


class wait_retry_after(wait_base):
    """The delay the server asked for (``retry-after-ms``, ``Retry-After`` in seconds or as an HTTP date, read by
    the openai client's own parser) when it is in (0, 2 min], as the client honours it; else the fallback backoff."""

    def __init__(self, client: openai.AsyncOpenAI, fallback: wait_base):
        self.client, self.fallback = client, fallback

    def __call__(self, retry_state) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        response = getattr(exc, "response", None)
        delay = openai_retry_after(self.client, response.headers) if response is not None else None
        if delay is not None and math.isfinite(delay) and 0 < delay <= OPENAI_MAX_RETRY_AFTER_DELAY:
            return delay
        return self.fallback(retry_state)


def prompt_estimate(messages) -> float:
    """About how many prompt tokens ``messages`` make: 4 characters a token (for pacing; budgets use a bound)."""
    return sum(len(str(m.get("content") or "")) for m in messages) / 4


def parse_duration(value: str | None) -> float | None:
    """Seconds in an ``x-ratelimit-reset-*`` value: ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"`` or a number."""
    if value is None:
        return None
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[u] for n, u in parts)


class ServerRateLimits:
    """The server's view of its rate-limit windows, from the ``x-ratelimit-*`` headers of every answer (errors
    included): requests and tokens left, and when each window resets. Between answers, each request sent counts
    against what is left; when a window has nothing left, sending waits for its reset."""

    def __init__(self):
        self.remaining: dict[str, float] = {}  # "requests" / "tokens" -> left in the current window
        self.reset_at: dict[str, float] = {}  # -> time.monotonic() of the window's reset

    def observe(self, headers: Mapping[str, str]) -> None:
        now = time.monotonic()
        for kind in ("requests", "tokens"):
            remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            try:
                self.remaining[kind] = float(remaining)
            except (TypeError, ValueError):
                continue
            self.reset_at[kind] = now + (reset if reset is not None else 0.0)

    async def acquire(self, tokens: float) -> None:
        """Wait until both windows have room for one request of about ``tokens`` tokens, then count it."""
        for kind, need in (("requests", 1.0), ("tokens", tokens)):
            while kind in self.remaining and self.remaining[kind] < need:
                delay = self.reset_at[kind] - time.monotonic()
                if delay <= 0:  # the window reset: the next answer says what is left
                    del self.remaining[kind]
                    break
                await asyncio.sleep(delay)
        for kind, need in (("requests", 1.0), ("tokens", tokens)):
            if kind in self.remaining:
                self.remaining[kind] -= need


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
        rate_window: float = RATE_WINDOW_S,
    ):
        if concurrency < 1 or max_attempts < 1:
            raise E5MistralError("concurrency and max_attempts must be >= 1")
        self.client, self.concurrency, self.max_attempts = client, concurrency, max_attempts
        # a bucket of one window's allowance that refills continuously (rate_window is shorter only in tests)
        self.request_limiter = AsyncLimiter(rpm * rate_window / 60, rate_window) if rpm else None
        self.token_limiter = AsyncLimiter(tpm * rate_window / 60, rate_window) if tpm else None
        self.token_capacity = tpm * rate_window / 60 if tpm else 0.0
        self.server_limits = ServerRateLimits()
        self._taken: dict[str, float] = {}  # request id -> tokens its last attempt took from the token bucket
        self._completions = (0, 0)  # completion tokens and answers so far, for the token bucket's estimate
        self.wait = wait_retry_after(client, wait_exponential_jitter(initial=initial_wait, max=max_wait))
        self.budget = budget
        self.endpoint = endpoint or str(client.base_url)
        self.stopped_by_budget = False
        self.running = 0  # the Backend interface: no batches here
        self._in_flight = 0
        self._fatal: BaseException | None = None
        self._connection_failures = 0  # consecutive requests that failed for connection reasons only
        self._refusals: tuple[int, str] | None = (0, "")  # (count, error) while every answer so far is a refusal

    async def check_endpoint(self) -> None:
        await check_reachable(self.client, self.endpoint)

    async def run(self, requests: Sequence[Request], journal: Journal) -> None:
        pending = iter(requests)
        limited = self.budget is not None and self.budget.limited

        async def worker() -> None:
            while self._fatal is None and not self.stopped_by_budget:
                request = next(pending, None)
                if request is None:
                    return
                reserved = worst_case_cost(request.body(), self.budget.prices) if limited else (0, 0.0)
                if limited and not await self._reserve(reserved):
                    self.stopped_by_budget = self._fatal is None
                    return
                self._in_flight += 1
                record = None
                try:
                    record = await self._answer(request)
                except EndpointError as err:
                    self._fatal = err
                finally:
                    self._in_flight -= 1
                    if limited:
                        self.budget.release(*reserved)
                self._answered.set()
                if record is not None:
                    journal.append(record)  # the budget now counts the answer's real usage
                    self._watch_refusals(record)
                    await self._charge_usage(request, record)
                if limited:  # wake the workers waiting for room in the budget
                    async with self._settled:
                        self._settled.notify_all()

        self._settled = asyncio.Condition()
        self._answered = asyncio.Event()
        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        if self._fatal is not None:
            raise self._fatal

    def _watch_refusals(self, record: dict) -> None:
        """Stop the run when its first ``REFUSAL_BREAKER`` answers are all refused with the same error."""
        if self._refusals is None or record["status"] == STATUS_FAILED:
            return
        count, error = self._refusals
        if record["status"] != STATUS_REFUSED or (count and record["error"] != error):
            self._refusals = None  # something else came back: refusals are about their requests
            return
        self._refusals = (count + 1, record["error"])
        if count + 1 >= REFUSAL_BREAKER and self._fatal is None:
            self._fatal = EndpointError(
                f"the endpoint refused the first {count + 1} requests of this run alike ({record['error']}): a "
                "setting of the run is wrong (a parameter the model does not take, --extra-body, --model); fix it "
                "and rerun with --retry-refused"
            )

    async def _reserve(self, reserved: tuple[int, float]) -> bool:
        """Reserve a request's worst case before it goes out; while it does not fit, wait for the requests in flight
        (their real usage is usually below their reservation). False when it does not fit with none in flight."""
        async with self._settled:
            while not self.budget.fits(*reserved):
                if not self._in_flight or self.stopped_by_budget or self._fatal is not None:
                    return False
                await self._settled.wait()
            self.budget.reserve(*reserved)
            return True

    def _expected_tokens(self, request: Request) -> float:
        """What the token bucket takes when ``request`` goes out: its prompt (about 4 characters a token) and the
        mean completion of the answers so far (its completion cap for the first request, which goes out alone), at
        most one bucket."""
        prompt = prompt_estimate(request.messages)
        cap = float(request.params.get("max_completion_tokens") or request.params.get("max_tokens") or 0)
        completion = min(cap, self._completions[0] / self._completions[1]) if self._completions[1] else cap
        return min(prompt + completion, self.token_capacity)

    async def _charge_usage(self, request: Request, record: dict) -> None:
        """The token bucket took an estimate when the request went out; once the answer is journaled it takes what
        the real usage adds to that (a bucket cannot give back, so the estimate follows the mean completion)."""
        if self.token_limiter is None:
            return
        usage = record.get("usage") or {}
        if record["status"] == STATUS_OK:
            self._completions = (self._completions[0] + usage.get("completion_tokens", 0), self._completions[1] + 1)
        taken = self._taken.pop(request.request_id, 0.0)
        rest = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0) - taken
        while rest > 0:  # one acquire may not exceed the bucket
            step = min(rest, self.token_capacity)
            await self.token_limiter.acquire(step)
            rest -= step

    async def post(self, body: dict):
        """One chat completion, as sent by every request of the plan; the server's rate-limit headers of the answer
        (or of the error) are kept, and sending waits while the server says a window is spent.

        The client's documented raw route (same auth, base URL, Azure deployment paths, timeouts and error classes as
        ``chat.completions.with_raw_response.create``): the headers come with it, and ``cast_to=object`` decodes the
        JSON untouched."""
        await self.server_limits.acquire(prompt_estimate(body.get("messages") or []))
        try:
            raw = await self.client.post(
                "/chat/completions",
                body=body,
                cast_to=object,
                options={"headers": {OPENAI_RAW_RESPONSE_HEADER: "true"}, "security": {"bearer_auth": True}},
            )
        except openai.APIStatusError as err:
            self.server_limits.observe(err.response.headers)
            raise
        self.server_limits.observe(raw.headers)
        return raw.parse()

    async def retry_rate_limits(self, send, body: dict):
        """``await send(body)``, retried only on rate limits (408/409/429) and connection errors: any other status
        is an answer about the request (the structured-output probe reads it as such)."""

        def transient(exc: BaseException) -> bool:
            return isinstance(exc, openai.APIConnectionError) or (
                isinstance(exc, openai.APIStatusError) and exc.status_code in TRANSIENT_STATUS
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
            if self._taken and not self._answered.is_set():  # the first answer tells what a completion uses
                await self._answered.wait()
            self._taken[request.request_id] = expected = self._expected_tokens(request)
            await self.token_limiter.acquire(expected)
        return await self.post(request.body())

    async def _answer(self, request: Request) -> dict:
        attempts = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self.wait,
            retry=retry_if_exception(lambda exc: is_retryable(self.client, exc)),
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
            if (
                err.status_code < 500
                and err.status_code not in TRANSIENT_STATUS
                and not is_retryable(self.client, err)
            ):
                # about the request itself: asking again gets the same answer
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
