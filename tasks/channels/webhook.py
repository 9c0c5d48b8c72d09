"""The `webhook` channel: POST one JSON body per touch to a URL (SMS gateways, app push providers).

Each request carries `Idempotency-Key: <touch key>`, identical on every retry and on a rerun after a
crash, so the provider can drop repeats. Timeouts, connection errors, 5xx and 429 are retried with
exponential backoff and jitter (a Retry-After header wins); any other 4xx is a dead letter with the
provider's message. When a message exhausts its retries the provider counts as down: the rest of the
batch is not attempted and comes back undelivered, for the rerun.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from typing import Any

import httpx
import pandas as pd

from infra.settings import ChannelConfig
from tasks.channels.base import Delivery, RateLimiter, Refused, Retryable, RetryPolicy, run_async


def payload(row: dict[str, Any]) -> dict[str, Any]:
    """The JSON body for one touch: who, which playbook step, tier, variant, channel, message and offer."""
    tier = row.get("tier")
    return {
        "touch_key": row["touch_key"], "customer_id": str(row["customer_id"]), "playbook": row.get("playbook"),
        "step": row.get("step"), "tier": None if tier is None else int(tier), "variant": row.get("variant"),
        "channel": row.get("channel"), "subject": row.get("subject"), "message": row.get("body"),
        "offer": row.get("offer"),
    }


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


class WebhookChannel:
    """Concurrent, rate-limited, retrying JSON POSTs; one httpx client per batch."""

    def __init__(self, name: str, config: ChannelConfig) -> None:
        self.name = name
        self.config = config
        self.location = f"webhook {httpx.URL(config.url or '').copy_with(query=None)}"
        self.policy = RetryPolicy(config.max_attempts, config.backoff_seconds, config.backoff_max_seconds)

    def send_batch(self, messages: pd.DataFrame) -> Delivery:
        rows = messages.astype(object).where(messages.notna(), None).to_dict("records")
        return run_async(self._send_all(rows))

    async def _send_all(self, rows: list[dict[str, Any]]) -> Delivery:
        out = Delivery()
        limiter = RateLimiter(self.config.rate_per_second)
        gate = asyncio.Semaphore(self.config.concurrency)
        limits = httpx.Limits(max_connections=self.config.concurrency, max_keepalive_connections=self.config.concurrency)
        headers = {"Content-Type": "application/json", **self.config.headers}

        def count_retry() -> None:
            out.retried += 1

        async with httpx.AsyncClient(timeout=self.config.timeout_seconds, limits=limits, headers=headers) as client:
            async def one(row: dict[str, Any]) -> None:
                key = row["touch_key"]
                async with gate:
                    if out.error is not None:  # the provider is down: do not hammer it
                        out.undelivered.append(key)
                        return
                    body = json.dumps(payload(row), ensure_ascii=False, default=str).encode()
                    try:
                        await self.policy.call(self._post, client, limiter, key, body, on_retry=count_retry)
                        out.sent.append(key)
                    except Refused as exc:
                        out.failed[key] = str(exc)
                    except Retryable as exc:
                        out.error = out.error or f"{exc} after {self.config.max_attempts} attempts"
                        out.undelivered.append(key)

            await asyncio.gather(*(one(r) for r in rows))
        return out

    async def _post(self, client: httpx.AsyncClient, limiter: RateLimiter, key: str, body: bytes) -> None:
        await limiter.acquire()
        try:
            response = await client.post(self.config.url or "", content=body, headers={"Idempotency-Key": key})
        except httpx.TimeoutException:
            raise Retryable("timeout") from None
        except httpx.TransportError as exc:
            raise Retryable(f"connection failed ({exc.__class__.__name__})") from None
        code = response.status_code
        if code == 429 or code >= 500:
            raise Retryable(f"HTTP {code}", retry_after(response.headers.get("Retry-After")))
        if code >= 400:
            raise Refused(f"http_{code}: {response.text.strip()[:100]}")
