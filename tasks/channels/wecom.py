"""The `wecom` channel: enterprise WeChat messages to external contacts, sent by their assigned advisor.

An access token from `cgi-bin/gettoken` is cached on the channel until shortly before it expires; a
token the API calls invalid or expired (40014, 42001, 40001) is dropped and fetched again once. Each
touch is one `externalcontact/add_msg_template` call (chat_type single, sender = the customer's
advisor). errcode -1 (busy) and 45009/45033 (frequency, concurrency limits), timeouts, 5xx and 429 are
retried with the shared backoff; any other errcode, or the customer in `fail_list`, is a dead letter
with the API's message. A customer without an advisor is a dead letter `no_advisor`. The API has no
idempotency key: the touch ledger is what keeps a rerun from sending twice.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pandas as pd

from infra.settings import ChannelConfig
from tasks.channels.base import (Delivery, RateLimiter, Refused, Retryable, RetryPolicy, http_request, records,
                                 run_async, send_concurrently)

TOKEN_ERRORS = {40001, 40014, 42001}  # invalid credential / access token, expired access token
BUSY_ERRORS = {-1, 45009, 45033}  # system busy, frequency limit, concurrency limit
TOKEN_MARGIN = 300.0  # seconds before expiry at which a cached token is refreshed


def message(row: dict[str, Any]) -> dict[str, Any]:
    """The add_msg_template body: one external contact, sent by the customer's advisor."""
    external = row.get("external_userid") or row["customer_id"]
    return {"chat_type": "single", "external_userid": [str(external)], "sender": str(row["advisor_id"]),
            "text": {"content": str(row.get("body") or "")}}


class WecomChannel:
    """Concurrent, rate-limited, retrying add_msg_template calls with a cached access token."""

    def __init__(self, name: str, config: ChannelConfig) -> None:
        self.name, self.config = name, config
        self.base = config.base_url.rstrip("/")
        self.location = f"wecom {self.base}"
        self.policy = RetryPolicy(config.max_attempts, config.backoff_seconds, config.backoff_max_seconds)
        self.token: str | None = None
        self.expires_at = 0.0  # time.monotonic() after which the cached token is not used
        self.token_lock: asyncio.Lock | None = None  # one per batch: each batch runs its own event loop

    def send_batch(self, messages: pd.DataFrame) -> Delivery:
        self.token_lock = asyncio.Lock()
        return run_async(send_concurrently(records(messages), self.config, self.policy, self._send,
                                           refuse=self._refuse))

    @staticmethod
    def _refuse(row: dict[str, Any]) -> str | None:
        return None if row.get("advisor_id") else "no_advisor: the customer has no assigned advisor"

    async def _call(self, client: httpx.AsyncClient, limiter: RateLimiter, method: str, path: str,
                    **kwargs: Any) -> dict[str, Any]:
        """One API call; the JSON answer (errcode checked by the caller)."""
        response = await http_request(client, limiter, method, f"{self.base}/cgi-bin/{path}", **kwargs)
        try:
            return response.json()
        except ValueError:
            raise Retryable(f"wecom answered HTTP {response.status_code} without JSON") from None

    async def _token(self, client: httpx.AsyncClient, limiter: RateLimiter) -> str:
        assert self.token_lock is not None
        async with self.token_lock:  # concurrent sends wait for one fetch
            if self.token is None or time.monotonic() >= self.expires_at:
                data = await self._call(client, limiter, "GET", "gettoken",
                                        params={"corpid": self.config.corp_id or "", "corpsecret": self.config.secret or ""})
                code = int(data.get("errcode", 0))
                if code != 0 or not data.get("access_token"):
                    # a bad corp id or secret stops the run (L602) rather than dead-lettering every customer
                    raise Retryable(f"wecom gettoken errcode {code}: {data.get('errmsg', '')}")
                lifetime = float(data.get("expires_in", 7200))
                self.token = str(data["access_token"])
                self.expires_at = time.monotonic() + max(0.0, lifetime - min(TOKEN_MARGIN, lifetime / 10))
            return self.token

    def _drop(self, token: str) -> None:
        if self.token == token:  # another send may already have fetched a fresh one
            self.token = None

    async def _send(self, client: httpx.AsyncClient, limiter: RateLimiter, row: dict[str, Any]) -> None:
        body = message(row)
        for refetched in (False, True):
            token = await self._token(client, limiter)
            data = await self._call(client, limiter, "POST", "externalcontact/add_msg_template",
                                    params={"access_token": token}, json=body)
            code = int(data.get("errcode", 0))
            if code in TOKEN_ERRORS:
                self._drop(token)
                if not refetched:
                    continue
                raise Retryable(f"wecom errcode {code}: a fresh access token was refused too")
            break
        errmsg = str(data.get("errmsg", ""))[:100]
        if code in BUSY_ERRORS:
            raise Retryable(f"wecom errcode {code}")
        if code != 0:
            raise Refused(f"wecom errcode {code}: {errmsg}")
        if set(body["external_userid"]) & {str(u) for u in data.get("fail_list") or []}:
            raise Refused("wecom fail_list: the advisor cannot reach this external contact")
