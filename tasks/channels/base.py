"""What every channel returns, and the shared machinery: retries with backoff and jitter, rate limits."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

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
