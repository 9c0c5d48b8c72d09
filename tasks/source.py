"""Where training and scoring read data from: the warehouse (SQL pushdown) or in-memory frames (a CSV).

Both produce the same `Extract` aggregates for `build_features`, so `--orders FILE.csv` and `--db URL`
give identical features on identical data (tests/tasks/test_source.py holds them equal). The frame
source sorts and encodes the orders once, then answers each cutoff with numpy bincounts: no
per-customer Python, and far fewer passes than a general groupby.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from tasks.extract import (DAY_NS, ENGAGEMENT_TYPES, EVENT_SCAN_DAYS, Extract, Shard, day_end, extract_all,
                           future_order_customers, last_order_day, order_aggregates)


class Source(Protocol):
    """Per-customer aggregates as of a date, and who ordered in a window after it (the labels)."""

    def extract(self, as_of: dt.date) -> Extract: ...

    def buyers(self, start: dt.date, days: int) -> set[str]: ...

    def last_order_day(self) -> dt.date | None: ...

    def describe(self) -> str: ...


@dataclass
class SqlSource:
    """The warehouse: one row per customer comes back; `shard` limits it to a range of customer ids
    (e.g. training on the first 100,000 customers of a big warehouse)."""

    engine: Engine
    shard: Shard | None = None

    def extract(self, as_of: dt.date) -> Extract:
        return extract_all(self.engine, as_of, shard=self.shard)

    def buyers(self, start: dt.date, days: int) -> set[str]:
        return future_order_customers(self.engine, start, days, shard=self.shard)

    def last_order_day(self) -> dt.date | None:
        return last_order_day(self.engine)

    def describe(self) -> str:
        from infra.warehouse.db import display_url

        where = display_url(str(self.engine.url))
        if self.shard is None:
            return where
        return f"{where} (customers {self.shard.lo or 'first'} to {self.shard.hi or 'last'})"


@dataclass
class FrameSource:
    """Orders (and optionally customers and events) held in memory, e.g. read from CSV files.

    orders: customer_id, ordered_at (naive UTC datetimes), amount. customers: customer_id and any of
    signed_up_at, timezone, member_tier, points, birthday, first_name, advisor_id. events:
    customer_id, occurred_at, type. Without customers, the customers are the buyers.
    """

    orders: pd.DataFrame
    customers: pd.DataFrame | None = None
    events: pd.DataFrame | None = None
    name: str = "in-memory frames"
    _o: dict = field(init=False, repr=False)
    _e: dict | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        o = self.orders.sort_values(["customer_id", "ordered_at"], kind="stable")
        codes, ids = pd.factorize(o["customer_id"].astype(str), sort=True)
        t = pd.to_datetime(o["ordered_at"]).to_numpy("datetime64[ns]").view("int64")
        self._o = {"ids": np.asarray(ids, dtype=object), "code": codes.astype(np.int64), "t": t,
                   "amount": o["amount"].to_numpy(dtype="float64")}
        if self.events is not None and len(self.events):
            # factorize once and look kinds up by code: a per-row map over tens of millions of
            # strings costs seconds
            tcodes, tnames = pd.factorize(self.events["type"])
            lookup = np.array([ENGAGEMENT_TYPES.index(t) if t in ENGAGEMENT_TYPES else -1 for t in tnames], dtype=np.int8)
            kinds = lookup[tcodes] if len(lookup) else np.empty(0, dtype=np.int8)
            e = self.events[kinds >= 0]
            kind = kinds[kinds >= 0]
            ecodes, eids = pd.factorize(e["customer_id"].astype(str), sort=True)
            self._e = {"ids": np.asarray(eids, dtype=object), "code": ecodes.astype(np.int64), "kind": kind,
                       "t": pd.to_datetime(e["occurred_at"]).to_numpy("datetime64[ns]").view("int64")}
        else:
            self.events = None

    @classmethod
    def from_warehouse(cls, engine: Engine) -> FrameSource:
        """Every order, customer and event of a warehouse in memory (tests and benchmarks)."""
        with engine.connect() as conn:
            orders = pd.read_sql("SELECT customer_id, ordered_at, amount FROM orders", conn, parse_dates=["ordered_at"])
            customers = pd.read_sql("SELECT * FROM customers", conn, parse_dates=["signed_up_at"])
            events = pd.read_sql("SELECT customer_id, occurred_at, type FROM events", conn, parse_dates=["occurred_at"])
        customers["birthday"] = pd.to_datetime(customers["birthday"]).dt.date
        return cls(orders, customers, events if len(events) else None, name="warehouse in memory")

    def extract(self, as_of: dt.date) -> Extract:
        end = pd.Timestamp(day_end(as_of)).value
        customers = None
        if self.customers is not None:
            c = self.customers
            signed = pd.to_datetime(c["signed_up_at"]) if "signed_up_at" in c else pd.Series(pd.NaT, index=c.index)
            keep = signed.isna() | (signed < pd.Timestamp(day_end(as_of)))
            customers = c[keep.to_numpy()].sort_values("customer_id").reset_index(drop=True)
            for col in ("signed_up_at", "timezone", "member_tier", "points", "birthday", "first_name", "advisor_id"):
                if col not in customers:
                    customers[col] = None
            customers["signed_up_at"] = pd.to_datetime(customers["signed_up_at"])
        return Extract(as_of, customers, self._orders_at(end), self._events_at(end))

    def _orders_at(self, end: int) -> pd.DataFrame:
        o = self._o
        keep = o["t"] < end
        return order_aggregates(o["ids"], o["code"][keep], o["t"][keep], o["amount"][keep], end)

    def _events_at(self, end: int) -> pd.DataFrame | None:
        if self._e is None:
            return None
        e = self._e
        age = end - e["t"]
        keep = (age > 0) & (age <= EVENT_SCAN_DAYS * DAY_NS)
        code, kind, age, t = e["code"][keep], e["kind"][keep], age[keep], e["t"][keep]
        n = len(e["ids"])
        recent = age <= 30 * DAY_NS
        before = (age > 30 * DAY_NS) & (age <= 60 * DAY_NS)
        visit = kind == ENGAGEMENT_TYPES.index("app.visit")

        def count(mask):
            return np.bincount(code, weights=mask.astype(np.float64), minlength=n).astype(np.int64)

        last = np.full(n, np.iinfo(np.int64).min)
        np.maximum.at(last, code, t)
        seen = np.bincount(code, minlength=n) > 0
        frame = pd.DataFrame({
            "customer_id": e["ids"],
            "visits_30d": count(recent & visit),
            "visits_prev_30d": count(before & visit),
            "opens_30d": count(recent & (kind == ENGAGEMENT_TYPES.index("message.open"))),
            "clicks_30d": count(recent & (kind == ENGAGEMENT_TYPES.index("message.click"))),
            "group_30d": count(recent & (kind == ENGAGEMENT_TYPES.index("group.message"))),
            "engagement_30d": count(recent),
            "engagement_prev_30d": count(before),
            "last_event_at": pd.to_datetime(np.where(seen, last, 0)),
        })
        return frame[seen].reset_index(drop=True)

    def buyers(self, start: dt.date, days: int) -> set[str]:
        begin = pd.Timestamp(day_end(start)).value
        o = self._o
        hit = (o["t"] >= begin) & (o["t"] < begin + days * DAY_NS)
        return set(o["ids"][np.unique(o["code"][hit])])

    def last_order_day(self) -> dt.date | None:
        return pd.Timestamp(self._o["t"].max()).date() if len(self._o["t"]) else None

    def describe(self) -> str:
        return self.name


def source_for(engine: Engine | None = None, frames: FrameSource | None = None) -> Source:
    """The warehouse unless frames were given."""
    return frames if frames is not None else SqlSource(engine)
