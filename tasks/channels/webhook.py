"""The `webhook` channel: POST one JSON body per touch to a URL (SMS gateways, app push providers).

Each request carries `Idempotency-Key: <touch key>`, identical on every retry and on a rerun after a
crash, so the provider can drop repeats. Timeouts, connection errors, 5xx and 429 are retried with
exponential backoff and jitter (a Retry-After header wins); any other 4xx is a dead letter with the
provider's message. When a message exhausts its retries the provider counts as down: the rest of the
batch is not attempted and comes back undelivered, for the rerun.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pandas as pd

from infra.redact import mask_url
from infra.settings import ChannelConfig
from tasks.channels.base import Delivery, RateLimiter, RetryPolicy, http_request, records, run_async, send_concurrently


def payload(row: dict[str, Any]) -> dict[str, Any]:
    """The JSON body for one touch: who, which playbook step, tier (1 for the segment's first, as dispatch hands
    it on: tasks/dispatch.py `for_consumers`), variant, channel, message and offer."""
    tier = row.get("tier")
    return {
        "touch_key": row["touch_key"], "customer_id": str(row["customer_id"]), "playbook": row.get("playbook"),
        "step": row.get("step"), "tier": None if tier is None else int(tier), "variant": row.get("variant"),
        "channel": row.get("channel"), "subject": row.get("subject"), "message": row.get("body"),
        "offer": row.get("offer"),
    }


class WebhookChannel:
    """Concurrent, rate-limited, retrying JSON POSTs; one httpx client per batch."""

    def __init__(self, name: str, config: ChannelConfig) -> None:
        self.name = name
        self.config = config
        self.location = f"webhook {mask_url(str(httpx.URL(config.url or '').copy_with(query=None)))}"
        self.policy = RetryPolicy(config.max_attempts, config.backoff_seconds, config.backoff_max_seconds)

    def send_batch(self, messages: pd.DataFrame, out: Delivery) -> Delivery:
        headers = {"Content-Type": "application/json", **self.config.headers}
        return run_async(send_concurrently(records(messages), self.config, self.policy, self._post, out,
                                           headers=headers))

    async def _post(self, client: httpx.AsyncClient, limiter: RateLimiter, row: dict[str, Any]) -> None:
        body = json.dumps(payload(row), ensure_ascii=False, default=str).encode()
        await http_request(client, limiter, "POST", self.config.url or "", content=body,
                           headers={"Idempotency-Key": row["touch_key"]})
