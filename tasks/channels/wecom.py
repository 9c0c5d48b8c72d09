"""The `wecom` channel: enterprise WeChat messages to external contacts, sent by their assigned advisor.

An access token from `cgi-bin/gettoken` is cached on the channel until shortly before it expires; a
token the API calls invalid or expired (40014, 42001, 40001) is dropped and fetched again once; a corp id
or secret gettoken refuses stops the channel (L604), nothing is dead-lettered. Each
touch is one `externalcontact/add_msg_template` call (chat_type single, sender = the customer's
advisor). errcode -1 (busy) and 45009/45033 (frequency, concurrency limits), timeouts, 5xx and 429 are
retried with the shared backoff; any other errcode, or the customer in `fail_list`, is a dead letter
with the API's message; so is an answer that cannot be read (`bad_reply`: the request may have been
delivered, so it is not sent again). A customer without an advisor is a dead letter `no_advisor`. The API has no
idempotency key: the touch ledger is what keeps a rerun from sending twice.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pandas as pd

from infra.redact import mask_url
from infra.settings import ChannelConfig
from tasks.channels.base import (Delivery, RateLimiter, Refused, Retryable, RetryPolicy, Unavailable, http_request,
                                 records, run_async, safe_text, send_concurrently)

TOKEN_ERRORS = {40001, 40014, 42001}  # invalid credential / access token, expired access token
BUSY_ERRORS = {-1, 45009, 45033}  # system busy, frequency limit, concurrency limit
# invalid corp id, missing access token / secret, API not permitted to this app, IP not on the trusted list:
# the channel's settings, not the message; nothing is dead-lettered
CONFIG_ERRORS = {40013, 41001, 41004, 48002, 60020}
MAX_TEXT_BYTES = 4000  # text.content of add_msg_template: at most 4,000 bytes (UTF-8: ~1,333 Chinese characters)
TOKEN_MARGIN = 300.0  # seconds before expiry at which a cached token is refreshed


class BadReply(Refused):
    """An answer that cannot be read: a dead letter, not a retry (the request may have been delivered)."""


def _is_code(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seconds(value: Any) -> float:
    """A token's lifetime from `expires_in`; the documented 7200 s when the answer gives none that is usable."""
    return float(value) if _is_code(value) and 0 < value <= 86_400 else 7200.0


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
        self.location = f"wecom {mask_url(self.base)}"
        self.policy = RetryPolicy(config.max_attempts, config.backoff_seconds, config.backoff_max_seconds)
        self.token: str | None = None
        self.expires_at = 0.0  # time.monotonic() after which the cached token is not used
        self.token_lock: asyncio.Lock | None = None  # one per batch: each batch runs its own event loop

    def send_batch(self, messages: pd.DataFrame, out: Delivery) -> Delivery:
        self.token_lock = asyncio.Lock()
        return run_async(send_concurrently(records(messages), self.config, self.policy, self._send, out,
                                           refuse=self._refuse))

    @staticmethod
    def _refuse(row: dict[str, Any]) -> str | None:
        if not row.get("advisor_id"):
            return "no_advisor: the customer has no assigned advisor"
        size = len(str(row.get("body") or "").encode())
        if size > MAX_TEXT_BYTES:
            return f"too_long: {size:,} bytes, WeCom takes at most {MAX_TEXT_BYTES:,} in a text message"
        return None

    async def _call(self, client: httpx.AsyncClient, limiter: RateLimiter, method: str, path: str,
                    **kwargs: Any) -> dict[str, Any]:
        """One API call; the JSON answer (errcode checked by the caller)."""
        response = await http_request(client, limiter, method, f"{self.base}/cgi-bin/{path}", **kwargs)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or not _is_code(data.get("errcode", 0)):
            # the request arrived and the answer cannot be read: sending again might send twice
            raise BadReply(f"bad_reply: wecom answered HTTP {response.status_code} with "
                           f"{'an errcode that is not a number' if isinstance(data, dict) else 'no JSON object'}")
        return data

    async def _token(self, client: httpx.AsyncClient, limiter: RateLimiter) -> str:
        assert self.token_lock is not None
        async with self.token_lock:  # concurrent sends wait for one fetch
            if self.token is None or time.monotonic() >= self.expires_at:
                try:
                    data = await self._call(client, limiter, "GET", "gettoken", params={
                        "corpid": self.config.corp_id or "", "corpsecret": self.config.secret or ""})
                except BadReply as exc:  # no message was sent: asking again is safe
                    raise Retryable(str(exc)) from None
                code = int(data.get("errcode", 0))
                if code in BUSY_ERRORS:
                    raise Retryable(f"wecom gettoken errcode {code}")
                if code != 0 or not isinstance(data.get("access_token"), str):
                    # a bad corp id or secret stops the channel (L604) rather than dead-lettering every customer
                    raise Unavailable(f"wecom gettoken refused the corp_id or secret: errcode {code}: "
                                      f"{safe_text(str(data.get('errmsg', '')))}")
                lifetime = _seconds(data.get("expires_in"))
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
        errmsg = safe_text(str(data.get("errmsg", "")))
        if code in BUSY_ERRORS:
            raise Retryable(f"wecom errcode {code}")
        if code in CONFIG_ERRORS:
            raise Unavailable(f"wecom refused the channel's settings: errcode {code}: {errmsg}")
        if code != 0:
            raise Refused(f"wecom errcode {code}: {errmsg}")
        failed = data.get("fail_list")
        if set(body["external_userid"]) & {str(u) for u in (failed if isinstance(failed, list) else [])}:
            raise Refused("wecom fail_list: the advisor cannot reach this external contact")
