"""The touch ledger's claim protocol: exactly-once delivery across crashes and concurrent runs.

1. `insert_absent` writes the run's decisions as ledger rows; a key already there (an earlier or a
   concurrent run) is left alone: INSERT ... ON CONFLICT DO NOTHING (after a COPY) / INSERT OR IGNORE.
2. `claim` takes a batch of `planned` keys for this run with one conditional UPDATE: only rows nobody
   holds, or whose holder's lease ran out (a crashed run), change hands. The database serialises the
   two UPDATEs of a row, so two concurrent runs can never both own, and both deliver, the same key.
3. `finish` marks what the channel delivered `sent`, what it refused `failed` (with the provider's
   message) and releases what it could not deliver, so the rerun takes it at once.

A key is sent again only when its run died between the claim and `finish`: the requests in flight.
LIFECYCLE_CLAIM_LEASE_SECONDS (default 600) is how long a claim holds; keep it above one batch's delivery.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd
from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Engine

from infra.warehouse.bulk import among, chunks, insert_ignore, utcnow
from infra.warehouse.schema import touches

if TYPE_CHECKING:
    from tasks.channels import Delivery

CHUNK = 2_000
DEFAULT_LEASE_SECONDS = 600
CRASH_ENV = "LIFECYCLE_TEST_CRASH_AT"  # tests only: "point:n" kills this process the n-th time `point` is reached
_crash_seen: dict[str, int] = {}


def lease() -> dt.timedelta:
    return dt.timedelta(seconds=float(os.environ.get("LIFECYCLE_CLAIM_LEASE_SECONDS", DEFAULT_LEASE_SECONDS)))


def new_token() -> str:
    """This run's claim id: unique per process, so a rerun never mistakes a dead run's claims for its own."""
    return uuid.uuid4().hex


def insert_absent(engine: Engine, ledger: pd.DataFrame, run: Mapping[str, object] | None = None) -> None:
    """Insert ledger rows whose touch_key is not there yet; existing rows win (the primary key decides).
    `run`: the columns every row of this run shares (playbook, day, plan, run id, timestamps)."""
    with engine.begin() as conn:
        insert_ignore(conn, touches, ledger, ["touch_key"], constants=run)


def claim(engine: Engine, keys: Sequence[str], token: str) -> set[str]:
    """Take the `planned` keys nobody holds (or whose lease expired) for `token`; returns those taken."""
    now = utcnow()
    t = touches.c
    mine: set[str] = set()
    with engine.begin() as conn:
        for part in chunks(list(keys), CHUNK):
            chunk = list(part)
            conn.execute(update(touches).where(
                among(t.touch_key, chunk), t.status == "planned",
                or_(t.claimed_by.is_(None), t.claimed_by == token, t.claimed_at < now - lease()),
            ).values(claimed_by=token, claimed_at=now))
            mine.update(conn.execute(select(t.touch_key).where(
                among(t.touch_key, chunk), t.claimed_by == token, t.status == "planned")).scalars())
    return mine


def finish(engine: Engine, token: str, delivery: Delivery) -> None:
    """Record a batch's outcome: sent, failed with the provider's reason, or released for the rerun."""
    now = utcnow()
    t = touches.c
    mine = and_(t.claimed_by == token, t.status == "planned")
    with engine.begin() as conn:
        for part in chunks(delivery.sent, CHUNK):
            conn.execute(update(touches).where(among(t.touch_key, part), mine)
                         .values(status="sent", updated_at=now))
        for key, why in delivery.failed.items():
            conn.execute(update(touches).where(t.touch_key == key, mine)
                         .values(status="failed", reason=why[:128], updated_at=now))
        for part in chunks(delivery.undelivered, CHUNK):
            conn.execute(update(touches).where(among(t.touch_key, part), mine)
                         .values(claimed_by=None, claimed_at=None, updated_at=now))


def crash_point(name: str) -> None:
    """Test hook for crash injection: SIGKILL this process at the configured point (no cleanup runs)."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _crash_seen[name] = _crash_seen.get(name, 0) + 1
    if _crash_seen[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
