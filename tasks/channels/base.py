"""What every channel returns, and the shared machinery: retries with backoff and jitter, rate limits,
and the concurrent HTTP batch loop the HTTP channels (webhook, wecom) share."""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pandas as pd
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from infra.faults import crash_point
from infra.redact import mask_secrets_in, strip_controls

if TYPE_CHECKING:
    from infra.settings import ChannelConfig

T = TypeVar("T")
PATIENCE = 120.0  # seconds; a provider asking to wait longer (Retry-After) is down for this run
MAX_REPLY_BYTES = 64 * 1024  # what is read of a provider's reply; a longer one is cut there
_ADDRESSES = re.compile(r"[^\s@<>\"']+@[^\s@<>\"']+|\+?\d[\d\s-]{6,}\d")


@dataclass
class Delivery:
    """The outcome of one batch, filled in as it goes: keys delivered, refused (dead letter, with the
    provider's reason), not delivered. A channel that breaks off leaves what it got done recorded here."""

    sent: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # touch_key -> provider's message
    undelivered: list[str] = field(default_factory=list)  # provider down: left planned for the rerun
    retried: int = 0
    error: str | None = None  # why the channel stopped (the provider is down, or the channel misconfigured)
    code: str = "L602"  # L602 provider down, L604 the channel's settings are wrong, L606 the ledger is gone

    def failed_reasons(self) -> dict[str, int]:
        """Dead letters per kind ("http_400", "smtp_550", ...): safe for logs, no provider text."""
        out: dict[str, int] = {}
        for why in self.failed.values():
            kind = why.split(":", 1)[0]
            out[kind] = out.get(kind, 0) + 1
        return out

    def stop(self, error: str, code: str = "L602") -> None:
        """The channel cannot go on: the first reason wins; what is not yet done stays planned."""
        if self.error is None:
            self.error, self.code = error, code

    def outstanding(self, keys: list[str]) -> list[str]:
        """Those of `keys` with no outcome yet (not sent, failed or handed back)."""
        done = {*self.sent, *self.failed, *self.undelivered}
        return [k for k in keys if k not in done]


class Retryable(Exception):
    """A transient provider failure (timeout, 5xx, 429): try again after `retry_after` or the backoff."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Refused(Exception):
    """The provider refused this message for good (other 4xx, bad address): dead-letter it."""


class Unavailable(Exception):
    """The channel cannot deliver anything now, whatever the message: its settings are wrong (a redirect,
    credentials refused, no such endpoint; L604) or the provider asks to wait longer than a run waits
    (L602). This message and the rest stay planned for the rerun."""

    def __init__(self, message: str, code: str = "L604") -> None:
        super().__init__(message)
        self.code = code


def safe_text(text: str, limit: int = 100) -> str:
    """Provider or exception text fit for the ledger, logs and a terminal: no control characters, no
    credentials, addresses or phone numbers, at most `limit` characters."""
    return _ADDRESSES.sub("<address>", mask_secrets_in(strip_controls(str(text), keep=""))).strip()[:limit]


def unexpected(exc: BaseException) -> str:
    """An exception no channel rule foresaw, as one message's dead letter: its class and a safe message."""
    return f"error_{type(exc).__name__}: {safe_text(str(exc), 90)}"


class RetryPolicy:
    """Exponential backoff with full jitter, capped; a provider's Retry-After wins when longer."""

    def __init__(self, attempts: int, base: float, cap: float) -> None:
        self.attempts, self.base, self.cap = attempts, base, cap

    def wait(self, state: RetryCallState) -> float:
        backoff = random.uniform(0, min(self.cap, self.base * 2 ** (state.attempt_number - 1)))
        exc = state.outcome.exception() if state.outcome else None
        after = getattr(exc, "retry_after", None)
        return max(backoff, min(after, PATIENCE)) if after is not None else backoff

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


@dataclass(frozen=True)
class Reply:
    """A provider's answer: status, headers and at most MAX_REPLY_BYTES of its body."""

    status_code: int
    headers: httpx.Headers
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


async def _read(response: httpx.Response) -> bytes:
    body = bytearray()
    async for part in response.aiter_bytes():
        body += part[: MAX_REPLY_BYTES - len(body)]
        if len(body) >= MAX_REPLY_BYTES:
            break
    return bytes(body)


async def http_request(client: httpx.AsyncClient, limiter: RateLimiter, method: str, url: str,
                       **kwargs: Any) -> Reply:
    """One rate-limited request, over within the client's timeout in all (a reply that trickles in counts
    as a timeout). Timeouts, connection errors, 408, 409, 425, 429 and 5xx raise Retryable; a redirect,
    refused credentials or a missing endpoint raise Unavailable (the channel is misconfigured, nothing is
    dead-lettered); a Retry-After beyond PATIENCE raises Unavailable too; other 4xx raise Refused."""
    await limiter.acquire()
    total = client.timeout.read or client.timeout.connect
    try:
        async with asyncio.timeout(total):
            async with client.stream(method, url, **kwargs) as response:
                reply = Reply(response.status_code, response.headers, await _read(response))
    except (httpx.TimeoutException, TimeoutError):
        raise Retryable("timeout") from None
    except httpx.TransportError as exc:
        raise Retryable(f"connection failed ({exc.__class__.__name__})") from None
    code = reply.status_code
    if code in (408, 409, 425, 429) or code >= 500:
        after = retry_after(reply.headers.get("Retry-After"))
        if after is not None and after > PATIENCE:
            raise Unavailable(f"the provider answered HTTP {code} and asks to wait {after:,.0f} s, longer than "
                              f"a run waits ({PATIENCE:.0f} s)", code="L602")
        raise Retryable(f"HTTP {code}", after)
    if 300 <= code < 400:
        where = safe_text(reply.headers.get("Location", ""), 80)
        raise Unavailable(f"the provider answered HTTP {code} (a redirect{' to ' + where if where else ''}), which "
                          "is not a delivery: set the channel's url to the address it points at")
    if code in (401, 403, 407):
        raise Unavailable(f"the provider refused the channel's credentials (HTTP {code})")
    if code in (404, 405, 410, 415, 426):
        raise Unavailable(f"HTTP {code}: the channel's url or the provider's API version is wrong")
    if code >= 400:
        raise Refused(f"http_{code}: {safe_text(reply.text)}")
    if code < 200:
        raise Refused(f"http_{code}: not a final answer")
    return reply


SendOne = Callable[[httpx.AsyncClient, RateLimiter, dict[str, Any]], Awaitable[None]]


async def send_concurrently(rows: list[dict[str, Any]], config: ChannelConfig, policy: RetryPolicy, send_one: SendOne,
                            out: Delivery, *, headers: dict[str, str] | None = None,
                            refuse: Callable[[dict[str, Any]], str | None] | None = None) -> Delivery:
    """Send every row with `send_one` (retried by `policy`), at most `concurrency` at once, one client per
    batch, recording each outcome in `out` as it comes.

    `refuse(row)` may dead-letter a row before any request (e.g. `no_advisor`). When a row exhausts its
    retries, or the channel turns out unusable, the rows not yet started come back undelivered, for the
    rerun. An exception nobody foresaw is that row's dead letter, never the batch's.
    """
    limiter = RateLimiter(config.rate_per_second)
    gate = asyncio.Semaphore(config.concurrency)
    limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)

    def count_retry() -> None:
        out.retried += 1

    async with httpx.AsyncClient(timeout=config.timeout_seconds, limits=limits, headers=headers) as client:
        async def one(row: dict[str, Any]) -> None:
            key = row["touch_key"]
            try:
                why = refuse(row) if refuse else None
            except Exception as exc:  # noqa: BLE001 - a row the checks cannot read is that row's failure
                why = unexpected(exc)
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
                    crash_point("sending")
                except Refused as exc:
                    out.failed[key] = safe_text(str(exc), 128)
                except Unavailable as exc:
                    out.stop(str(exc), exc.code)
                    out.undelivered.append(key)
                except Retryable as exc:
                    out.stop(f"{exc} after {config.max_attempts} attempts")
                    out.undelivered.append(key)
                except Exception as exc:  # noqa: BLE001 - this message's failure, never the batch's
                    out.failed[key] = unexpected(exc)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # an interrupt: the others stop, then it goes on from here
                    interrupts.append(exc)
                    out.stop(f"interrupted ({type(exc).__name__})")

        interrupts: list[BaseException] = []
        await asyncio.gather(*(one(r) for r in rows))
        if interrupts:
            raise interrupts[0]
    return out
