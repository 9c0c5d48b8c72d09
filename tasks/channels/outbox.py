"""The `outbox` channel, the embedded default: what would be sent, written where a user can read it.

Every record carries its touch key, so a consumer can drop the rare repeat of a batch that was in
flight when a run crashed. Appends take an exclusive file lock (concurrent runs never interleave), and
a line torn by a kill mid-write is ended before the next batch, so it is the only unreadable line.
"""

from __future__ import annotations

import datetime as dt
import fcntl
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

    def send_batch(self, messages: pd.DataFrame, out: Delivery) -> Delivery:
        """Deliver a batch (columns touch_key, customer_id, subject, body, ...) durably before returning.
        A file that cannot be written (disk full, no permission) stops the channel; the batch stays planned."""
        now = utcnow()
        keys = list(messages["touch_key"])
        try:
            if self.config.table:
                self._to_table(messages, now)
            else:
                self._to_file(messages, now)
        except OSError as exc:
            out.stop(f"the outbox {self.location} cannot be written: {exc.strerror or exc.__class__.__name__}")
            out.undelivered.extend(keys)
            return out
        out.sent.extend(keys)
        return out

    def _to_file(self, messages: pd.DataFrame, now: dt.datetime) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stamp = now.isoformat(timespec="seconds") + "Z"
        lines = [
            json.dumps({**{k: (None if pd.isna(v) else v) for k, v in rec.items()}, "channel": self.name,
                        "written_at": stamp}, ensure_ascii=False, default=str)
            for rec in messages.to_dict("records")
        ]
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # concurrent runs append whole batches, never interleaved lines
            try:
                fh.seek(0, os.SEEK_END)
                torn = fh.tell() > 0 and not _ends_with_newline(fh)
                # a run killed mid-write left half a line: end it, so the next record starts on its own line
                fh.write(("\n" if torn else "").encode() + ("\n".join(lines) + "\n").encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _to_table(self, messages: pd.DataFrame, now: dt.datetime) -> None:
        rows = messages[["touch_key", "customer_id", "subject", "body"]].assign(channel=self.name, created_at=now)
        with self.engine.begin() as conn:
            keys = list(rows["touch_key"])
            done = set(conn.execute(select(outbox.c.touch_key).where(outbox.c.touch_key.in_(keys))).scalars())
            bulk_insert(conn, outbox, rows[~rows["touch_key"].isin(done)])


def _ends_with_newline(fh) -> bool:
    fh.seek(-1, os.SEEK_END)
    last = fh.read(1)
    fh.seek(0, os.SEEK_END)
    return last == b"\n"
