"""What every channel returns, and the shared machinery: retries with backoff and jitter, rate limits,
and the concurrent HTTP batch loop the HTTP channels (webhook, wecom) share."""

from __future__ import annotations

import asyncio
import email.utils
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pandas as pd
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

if TYPE_CHECKING:
    from infra.settings import ChannelConfig

T = TypeVar("T")
MAX_RETRY_AFTER = 120.0  # seconds; a longer Retry-After means the provider is down for this run


@dataclass
class Delivery:
    """The outcome of one batch: keys delivered, refused (dead letter, with the provider's reason), not delivered."""

    sent: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # touch_key -> provider's message
    undelivered: list[str] = field(default_factory=list)  # provider down: left planned for the rerun
    retried: int = 0
    error: str | None = None  # why the provider counts as down

    def failed_reasons(self) -> dict[str, int]:
        """Dead letters per kind ("http_400", "smtp_550", ...): safe for logs, no provider text."""
        out: dict[str, int] = {}
        for why in self.failed.values():
            kind = why.split(":", 1)[0]
            out[kind] = out.get(kind, 0) + 1
        return out


class Retryable(Exception):
    """A transient provider failure (timeout, 5xx, 429): try again after `retry_after` or the backoff."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Refused(Exception):
    """The provider refused this message for good (other 4xx, bad address): dead-letter it."""


class RetryPolicy:
    """Exponential backoff with full jitter, capped; a provider's Retry-After wins when longer."""

    def __init__(self, attempts: int, base: float, cap: float) -> None:
        self.attempts, self.base, self.cap = attempts, base, cap

    def wait(self, state: RetryCallState) -> float:
        backoff = random.uniform(0, min(self.cap, self.base * 2 ** (state.attempt_number - 1)))
        exc = state.outcome.exception() if state.outcome else None
        after = getattr(exc, "retry_after", None)
        return max(backoff, min(after, MAX_RETRY_AFTER)) if after is not None else backoff

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, on_retry: Callable[[], None]) -> T:
        """Await `fn(*args)`, retrying Retryable; the last Retryable propagates when attempts run out."""
        retrying = AsyncRetrying(stop=stop_after_attempt(self.attempts), wait=self.wait, reraise=True,
                                 retry=retry_if_exception_type(Retryable),
                                 before_sleep=lambda _state: on_retry())
        return await retrying(fn, *args)


class RateLimiter:
    """At most `per_second` starts per second, spaced evenly (None: unlimited)."""

    def __init__(self, per_second: float | None) -> None:
        self.interval = 1.0 / per_second if per_second else 0.0
        self.next = 0.0
        self.lock = asyncio.Lock()

    async def acquire(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            slot = max(now, self.next)
            self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, also when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def records(messages: pd.DataFrame) -> list[dict[str, Any]]:
    """The batch as plain dicts, with None (not NaN / pd.NA) for missing values."""
    return messages.astype(object).where(messages.notna(), None).to_dict("records")


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


async def http_request(client: httpx.AsyncClient, limiter: RateLimiter, method: str, url: str,
                       **kwargs: Any) -> httpx.Response:
    """One rate-limited request; timeouts, connection errors, 5xx and 429 raise Retryable, other 4xx Refused."""
    await limiter.acquire()
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.TimeoutException:
        raise Retryable("timeout") from None
    except httpx.TransportError as exc:
        raise Retryable(f"connection failed ({exc.__class__.__name__})") from None
    code = response.status_code
    if code == 429 or code >= 500:
        raise Retryable(f"HTTP {code}", retry_after(response.headers.get("Retry-After")))
    if code >= 400:
        raise Refused(f"http_{code}: {response.text.strip()[:100]}")
    return response


SendOne = Callable[[httpx.AsyncClient, RateLimiter, dict[str, Any]], Awaitable[None]]


async def send_concurrently(rows: list[dict[str, Any]], config: ChannelConfig, policy: RetryPolicy, send_one: SendOne,
                            *, headers: dict[str, str] | None = None,
                            refuse: Callable[[dict[str, Any]], str | None] | None = None) -> Delivery:
    """Send every row with `send_one` (retried by `policy`), at most `concurrency` at once, one client per batch.

    `refuse(row)` may dead-letter a row before any request (e.g. `no_advisor`). When a row exhausts its
    retries the provider counts as down: the rows not yet started come back undelivered, for the rerun.
    """
    out = Delivery()
    limiter = RateLimiter(config.rate_per_second)
    gate = asyncio.Semaphore(config.concurrency)
    limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)

    def count_retry() -> None:
        out.retried += 1

    async with httpx.AsyncClient(timeout=config.timeout_seconds, limits=limits, headers=headers) as client:
        async def one(row: dict[str, Any]) -> None:
            key = row["touch_key"]
            why = refuse(row) if refuse else None
            if why is not None:
                out.failed[key] = why
                return
            async with gate:
                if out.error is not None:  # the provider is down: do not hammer it
                    out.undelivered.append(key)
                    return
                try:
                    await policy.call(send_one, client, limiter, row, on_retry=count_retry)
                    out.sent.append(key)
                except Refused as exc:
                    out.failed[key] = str(exc)
                except Retryable as exc:
                    out.error = out.error or f"{exc} after {config.max_attempts} attempts"
                    out.undelivered.append(key)

        await asyncio.gather(*(one(r) for r in rows))
    return out
