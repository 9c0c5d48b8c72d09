"""Delivery channels, chosen by `type` in the project config: outbox (default), webhook, email, wecom.

Every channel takes a batch of rendered messages (one row per touch, with its touch key) and returns
a Delivery: sent, failed (refused for good, with the provider's reason) and undelivered (the provider
is down; dispatch leaves those keys planned for the rerun). Each message carries its touch key to the
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

    def send_batch(self, messages: pd.DataFrame) -> Delivery: ...


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
