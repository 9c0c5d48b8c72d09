"""Features of a few customers at given days, from those customers' own rows only.

`lifecycle explain` (one customer) and the uplift history (the customers a playbook selected, each at
the day it decided about them) need the catalog features the pipeline computed, without aggregating
the whole warehouse for every day. The customers' rows are read by id (chunked IN lists on the
customer indexes), held as a `tasks.source.FrameSource`, and turned into features by the pipeline's
own `build_features`, so the values are those a run on that day computed. Email and phone are never read.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import Engine

from infra.warehouse import limits
from infra.warehouse.bulk import among, chunks
from infra.warehouse.schema import customers, events, orders
from tasks.extract import EVENT_SCAN_DAYS, birthday, day_end, has_events
from tasks.features import build_features
from tasks.source import FrameSource

CUSTOMER_COLUMNS = ["customer_id", "signed_up_at", "timezone", "member_tier", "points", "birthday", "first_name",
                    "advisor_id"]
# An interaction outside every window: when the warehouse has events but these customers have none in
# range, it keeps the engagement columns in the features (as zeros), as the warehouse-wide extract would.
_PLACEHOLDER = {"customer_id": "\x00none", "occurred_at": dt.datetime(1970, 1, 1), "type": "app.visit"}


@dataclass(frozen=True)
class Rows:
    """Some customers' own rows: customers (no email, no phone), orders and events, as frames."""

    customers: pd.DataFrame
    orders: pd.DataFrame
    events: pd.DataFrame | None  # None when the warehouse has no events at all


def read_rows(engine: Engine, customer_ids: Sequence[str], until: dt.date, since: dt.date | None = None) -> Rows:
    """The customers' rows up to the end of `until`; events from EVENT_SCAN_DAYS before `since` on."""
    end = day_end(until)
    start = day_end(since or until) - dt.timedelta(days=EVENT_SCAN_DAYS + 1)
    who, bought, seen = [], [], []
    ids = sorted(set(map(str, customer_ids)))
    columns = [birthday(customers.c.birthday).label("birthday") if c == "birthday" else customers.c[c]
               for c in CUSTOMER_COLUMNS]
    with engine.connect() as conn:
        for part in chunks(ids):
            # the rows a run's extract leaves out (infra/warehouse/limits.py) are left out here too
            who += conn.execute(select(*columns).where(among(customers.c.customer_id, part),
                                                       *limits.good_customers())).all()
            bought += conn.execute(select(orders.c.customer_id, orders.c.ordered_at, orders.c.amount)
                                   .where(among(orders.c.customer_id, part), orders.c.ordered_at < end,
                                          *limits.good_orders())).all()
            seen += conn.execute(select(events.c.customer_id, events.c.occurred_at, events.c.type)
                                 .where(among(events.c.customer_id, part), events.c.occurred_at >= start,
                                        events.c.occurred_at < end)).all()
        with_events = has_events(conn)
    bought_f = pd.DataFrame(bought, columns=["customer_id", "ordered_at", "amount"])
    bought_f["ordered_at"] = pd.to_datetime(bought_f["ordered_at"])
    bought_f["amount"] = bought_f["amount"].astype("float64")
    seen_f = pd.DataFrame(seen, columns=["customer_id", "occurred_at", "type"])
    seen_f["occurred_at"] = pd.to_datetime(seen_f["occurred_at"])
    return Rows(pd.DataFrame(who, columns=CUSTOMER_COLUMNS), bought_f, seen_f if with_events else None)


def _source(rows: Rows, ids: set[str]) -> FrameSource:
    """A FrameSource over just these customers' rows."""
    who = rows.customers[rows.customers["customer_id"].isin(ids)]
    bought = rows.orders[rows.orders["customer_id"].isin(ids)]
    seen = None
    if rows.events is not None:
        seen = pd.concat([rows.events[rows.events["customer_id"].isin(ids)], pd.DataFrame([_PLACEHOLDER])],
                         ignore_index=True)
    return FrameSource(bought, who if len(who) else None, seen, name=f"{len(ids):,} customers")


def features_by_day(rows: Rows, days: pd.Series) -> pd.DataFrame:
    """Each customer's features as of their own day (`days`: customer_id -> date); one FrameSource per day
    over that day's customers only, so the work is one pass over the rows however many days there are."""
    parts = []
    for day, group in days.groupby(days, sort=True):
        ids = set(map(str, group.index))
        feats = build_features(_source(rows, ids).extract(day))
        parts.append(feats.loc[feats.index.isin(ids)])
    return pd.concat(parts) if parts else pd.DataFrame()


def customer_features(engine: Engine, customer_id: str, as_of: dt.date) -> pd.DataFrame:
    """One customer's features as of the date: one row, or none when they were not a customer yet."""
    rows = read_rows(engine, [customer_id], as_of)
    return features_by_day(rows, pd.Series([as_of], index=[customer_id]))
