"""The `outbox` channel, the embedded default: what would be sent, written where a user can read it.

Every record carries its touch key, so a consumer can drop the rare repeat of a batch that was in
flight when a run crashed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import Engine

from infra.settings import ChannelConfig, outbox_dir
from infra.warehouse.bulk import bulk_insert, utcnow
from infra.warehouse.schema import outbox
from tasks.channels.base import Delivery


class OutboxChannel:
    """Writes messages to a JSON-lines file (default) or to the warehouse's `outbox` table."""

    def __init__(self, name: str, config: ChannelConfig, engine: Engine) -> None:
        self.name = name
        self.config = config
        self.engine = engine

    @property
    def location(self) -> str:
        return "warehouse table outbox" if self.config.table else str(self.path)

    @property
    def path(self) -> Path:
        if self.config.path:
            return Path(os.path.expanduser(self.config.path))
        return outbox_dir() / f"{self.name}.jsonl"

    def send_batch(self, messages: pd.DataFrame) -> Delivery:
        """Deliver a batch (columns touch_key, customer_id, subject, body, ...) durably before returning."""
        now = utcnow()
        if self.config.table:
            self._to_table(messages, now)
        else:
            self._to_file(messages, now)
        return Delivery(sent=list(messages["touch_key"]))

    def _to_file(self, messages: pd.DataFrame, now: dt.datetime) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stamp = now.isoformat(timespec="seconds") + "Z"
        lines = [
            json.dumps({**{k: (None if pd.isna(v) else v) for k, v in rec.items()}, "channel": self.name,
                        "written_at": stamp}, ensure_ascii=False, default=str)
            for rec in messages.to_dict("records")
        ]
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _to_table(self, messages: pd.DataFrame, now: dt.datetime) -> None:
        rows = messages[["touch_key", "customer_id", "subject", "body"]].assign(channel=self.name, created_at=now)
        with self.engine.begin() as conn:
            keys = list(rows["touch_key"])
            done = set(conn.execute(select(outbox.c.touch_key).where(outbox.c.touch_key.in_(keys))).scalars())
            bulk_insert(conn, outbox, rows[~rows["touch_key"].isin(done)])

