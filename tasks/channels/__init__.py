"""Delivery channels, chosen by `type` in the project config: outbox (default), webhook, email, wecom.

Every channel takes a batch of rendered messages (one row per touch, with its touch key) and fills in
a Delivery as it goes: sent, failed (refused for good, with the provider's reason, or an exception no
rule foresaw, with its class) and undelivered (the provider is down or the channel misconfigured;
dispatch leaves those keys planned for the rerun). Should a channel break off anyway (an interrupt, a
bug), what it recorded so far is kept and the rest is released. Each message carries its touch key to the
provider (the webhook's Idempotency-Key), so a provider can drop the rare repeat after a crash.
"""

from __future__ import annotations

from typing import Protocol

import pandas as pd
from sqlalchemy.engine import Engine

from infra.settings import ChannelConfig
from tasks.channels.base import Delivery
from tasks.channels.outbox import OutboxChannel

__all__ = ["Channel", "Delivery", "OutboxChannel", "open_channel"]


class Channel(Protocol):
    location: str

    def send_batch(self, messages: pd.DataFrame, out: Delivery) -> Delivery: ...


def open_channel(name: str, config: ChannelConfig, engine: Engine) -> Channel:
    """The channel object for a configured channel (types load_config does not know are rejected there)."""
    if config.type == "webhook":
        from tasks.channels.webhook import WebhookChannel

        return WebhookChannel(name, config)
    if config.type == "email":
        from tasks.channels.email import EmailChannel

        return EmailChannel(name, config, engine)
    if config.type == "wecom":
        from tasks.channels.wecom import WecomChannel

        return WecomChannel(name, config)
    if config.type == "outbox":
        return OutboxChannel(name, config, engine)
    raise NotImplementedError(f"channel type {config.type}")  # rejected earlier by load_config
