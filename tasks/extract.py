"""Extract: per-customer aggregates pushed down to SQL, so only one row per customer leaves the database.

Only data on or before the as-of date is read (the as-of day is included: everything before
midnight after it). Windows are counted in SQL with CASE sums, which every SQLAlchemy dialect runs;
gaps between orders use a LAG window (SQLite 3.25+, PostgreSQL). `tasks.source.FrameSource` computes
the same aggregates from in-memory frames (a CSV file, no warehouse); tests hold the two equal.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import and_, case, exists, func, select
from sqlalchemy.engine import Connection, Engine

from infra.warehouse.schema import customers, events, orders

ENGAGEMENT_TYPES = ("app.visit", "product.view", "message.open", "message.click", "group.message")
EVENT_SCAN_DAYS = 180  # last_event_days looks this far back; counts need only 60 days
CUSTOMER_COLUMNS = ["customer_id", "signed_up_at", "timezone", "member_tier", "points", "birthday",
                    "first_name", "advisor_id"]
ORDER_COLUMNS = ["customer_id", "orders_total", "monetary_total", "first_order_at", "last_order_at",
                 "orders_30d", "orders_90d", "orders_prev_90d", "orders_180d", "orders_365d",
                 "monetary_30d", "monetary_90d", "monetary_prev_90d", "monetary_365d",
                 "gap_sq_sum", "max_gap_days"]
EVENT_COLUMNS = ["customer_id", "visits_30d", "visits_prev_30d", "opens_30d", "clicks_30d", "group_30d",
                 "engagement_30d", "engagement_prev_30d", "last_event_at"]


@dataclass(frozen=True)
class Extract:
    """Raw per-customer inputs for the features step, all keyed by customer_id.

    `customers` is None when there is no customer table (orders alone: the buyers are the customers);
    `events` is None when there are no events, and the engagement features are then left out.
    """

    as_of: dt.date
    customers: pd.DataFrame | None
    orders: pd.DataFrame
    events: pd.DataFrame | None


def day_end(as_of: dt.date) -> dt.datetime:
    """The first instant after the as-of day; data strictly before it counts."""
    return dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time())


def _frame(conn, stmt, columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(conn.execute(stmt).all(), columns=columns)


def _epoch_days(conn: Connection, column):
    """A timestamp as fractional days, in the dialect's own arithmetic (for gaps between orders)."""
    if conn.dialect.name == "sqlite":
        return func.julianday(column)
    return func.extract("epoch", column) / 86400.0


def extract_customers(conn, as_of: dt.date) -> pd.DataFrame:
    stmt = select(*(customers.c[c] for c in CUSTOMER_COLUMNS)).where(customers.c.signed_up_at < day_end(as_of))
    frame = _frame(conn, stmt.order_by(customers.c.customer_id), CUSTOMER_COLUMNS)
    frame["signed_up_at"] = pd.to_datetime(frame["signed_up_at"])
    return frame


def extract_orders(conn, as_of: dt.date) -> pd.DataFrame:
    end = day_end(as_of)
    t = orders.c
    day = _epoch_days(conn, t.ordered_at)
    lagged = (
        select(t.customer_id, t.ordered_at, t.amount,
               (day - func.lag(day).over(partition_by=t.customer_id, order_by=t.ordered_at)).label("gap"))
        .where(t.ordered_at < end)
        .subquery()
    )
    o = lagged.c

    def window(days: int, value=1, until: int = 0):
        since = o.ordered_at >= end - dt.timedelta(days=days)
        cond = and_(since, o.ordered_at < end - dt.timedelta(days=until)) if until else since
        return func.sum(case((cond, value), else_=0))

    stmt = (
        select(
            o.customer_id,
            func.count().label("orders_total"),
            func.sum(o.amount).label("monetary_total"),
            func.min(o.ordered_at).label("first_order_at"),
            func.max(o.ordered_at).label("last_order_at"),
            window(30).label("orders_30d"),
            window(90).label("orders_90d"),
            window(180, until=90).label("orders_prev_90d"),
            window(180).label("orders_180d"),
            window(365).label("orders_365d"),
            window(30, o.amount).label("monetary_30d"),
            window(90, o.amount).label("monetary_90d"),
            window(180, o.amount, until=90).label("monetary_prev_90d"),
            window(365, o.amount).label("monetary_365d"),
            func.sum(o.gap * o.gap).label("gap_sq_sum"),
            func.max(o.gap).label("max_gap_days"),
        )
        .group_by(o.customer_id)
    )
    frame = _frame(conn, stmt, ORDER_COLUMNS)
    for c in ("first_order_at", "last_order_at"):
        frame[c] = pd.to_datetime(frame[c])
    return frame


def extract_events(conn, as_of: dt.date) -> pd.DataFrame:
    """Interaction counts in the last 30 days and the 30 before, by kind, and the last interaction."""
    end = day_end(as_of)
    mid, start = end - dt.timedelta(days=30), end - dt.timedelta(days=60)
    t = events.c
    recent = t.occurred_at >= mid
    before = and_(t.occurred_at >= start, ~recent)

    def count(condition):
        return func.sum(case((condition, 1), else_=0))

    stmt = (
        select(
            t.customer_id,
            count(and_(recent, t.type == "app.visit")).label("visits_30d"),
            count(and_(before, t.type == "app.visit")).label("visits_prev_30d"),
            count(and_(recent, t.type == "message.open")).label("opens_30d"),
            count(and_(recent, t.type == "message.click")).label("clicks_30d"),
            count(and_(recent, t.type == "group.message")).label("group_30d"),
            count(and_(recent, t.type.in_(ENGAGEMENT_TYPES))).label("engagement_30d"),
            count(and_(before, t.type.in_(ENGAGEMENT_TYPES))).label("engagement_prev_30d"),
            func.max(case((t.type.in_(ENGAGEMENT_TYPES), t.occurred_at), else_=None)).label("last_event_at"),
        )
        .where(t.occurred_at >= end - dt.timedelta(days=EVENT_SCAN_DAYS), t.occurred_at < end)
        .group_by(t.customer_id)
    )
    frame = _frame(conn, stmt, EVENT_COLUMNS)
    frame["last_event_at"] = pd.to_datetime(frame["last_event_at"])
    return frame


def has_events(conn) -> bool:
    """Whether the warehouse records interactions at all (an empty events table means: no events data)."""
    return bool(conn.execute(select(exists().select_from(events))).scalar())


def extract_all(engine: Engine, as_of: dt.date) -> Extract:
    """One read-only transaction, so the reads see the same warehouse state."""
    with engine.connect() as conn:
        ev = extract_events(conn, as_of) if has_events(conn) else None
        return Extract(as_of, extract_customers(conn, as_of), extract_orders(conn, as_of), ev)


def future_order_customers(engine: Engine, start: dt.date, days: int) -> set[str]:
    """Customers with an order in the `days` days after `start` (the churn label window)."""
    begin = day_end(start)
    stmt = (
        select(orders.c.customer_id)
        .where(orders.c.ordered_at >= begin, orders.c.ordered_at < begin + dt.timedelta(days=days))
        .distinct()
    )
    with engine.connect() as conn:
        return set(conn.execute(stmt).scalars())


@task(name="extract", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def extract(engine: Engine, as_of: dt.date) -> Extract:
    return extract_all(engine, as_of)
