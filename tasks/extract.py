"""Extract: per-customer aggregates pushed down to SQL, so only one row per customer leaves the database.

Only data on or before the as-of date is read (the as-of day is included: everything before
midnight after it). Windows are counted in SQL with CASE sums, which every SQLAlchemy dialect runs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import and_, case, func, select
from sqlalchemy.engine import Engine

from infra.warehouse.schema import customers, events, orders

ENGAGEMENT_TYPES = ("app.visit", "product.view", "message.open", "message.click", "group.message")


@dataclass(frozen=True)
class Extract:
    """Raw per-customer inputs for the features step, all keyed by customer_id."""

    as_of: dt.date
    customers: pd.DataFrame
    orders: pd.DataFrame
    events: pd.DataFrame


def day_end(as_of: dt.date) -> dt.datetime:
    """The first instant after the as-of day; data strictly before it counts."""
    return dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time())


def _frame(conn, stmt, columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(conn.execute(stmt).all(), columns=columns)


def extract_customers(conn, as_of: dt.date) -> pd.DataFrame:
    cols = ["customer_id", "signed_up_at", "timezone", "member_tier", "points", "birthday",
            "first_name", "advisor_id"]
    stmt = select(*(customers.c[c] for c in cols)).where(customers.c.signed_up_at < day_end(as_of))
    frame = _frame(conn, stmt.order_by(customers.c.customer_id), cols)
    frame["signed_up_at"] = pd.to_datetime(frame["signed_up_at"])
    return frame


def extract_orders(conn, as_of: dt.date) -> pd.DataFrame:
    end = day_end(as_of)
    t = orders.c

    def window(days: int, value=1):
        return func.sum(case((t.ordered_at >= end - dt.timedelta(days=days), value), else_=0))

    stmt = (
        select(
            t.customer_id,
            func.count().label("orders_total"),
            func.sum(t.amount).label("monetary_total"),
            func.min(t.ordered_at).label("first_order_at"),
            func.max(t.ordered_at).label("last_order_at"),
            window(30).label("orders_30d"),
            window(90).label("orders_90d"),
            window(365).label("orders_365d"),
            window(90, t.amount).label("monetary_90d"),
            window(365, t.amount).label("monetary_365d"),
        )
        .where(t.ordered_at < end)
        .group_by(t.customer_id)
    )
    cols = ["customer_id", "orders_total", "monetary_total", "first_order_at", "last_order_at",
            "orders_30d", "orders_90d", "orders_365d", "monetary_90d", "monetary_365d"]
    frame = _frame(conn, stmt, cols)
    for c in ("first_order_at", "last_order_at"):
        frame[c] = pd.to_datetime(frame[c])
    return frame


def extract_events(conn, as_of: dt.date) -> pd.DataFrame:
    """Interaction counts in the last 30 days and the 30 before, by kind; only 60 days are scanned."""
    end = day_end(as_of)
    mid, start = end - dt.timedelta(days=30), end - dt.timedelta(days=60)
    t = events.c
    recent = t.occurred_at >= mid

    def count(condition):
        return func.sum(case((condition, 1), else_=0))

    stmt = (
        select(
            t.customer_id,
            count(and_(recent, t.type == "app.visit")).label("visits_30d"),
            count(and_(~recent, t.type == "app.visit")).label("visits_prev_30d"),
            count(and_(recent, t.type == "message.open")).label("opens_30d"),
            count(and_(recent, t.type == "message.click")).label("clicks_30d"),
            count(and_(recent, t.type.in_(ENGAGEMENT_TYPES))).label("engagement_30d"),
            count(and_(~recent, t.type.in_(ENGAGEMENT_TYPES))).label("engagement_prev_30d"),
        )
        .where(t.occurred_at >= start, t.occurred_at < end)
        .group_by(t.customer_id)
    )
    cols = ["customer_id", "visits_30d", "visits_prev_30d", "opens_30d", "clicks_30d",
            "engagement_30d", "engagement_prev_30d"]
    return _frame(conn, stmt, cols)


def extract_all(engine: Engine, as_of: dt.date) -> Extract:
    """One read-only transaction, so the three reads see the same warehouse state."""
    with engine.connect() as conn:
        return Extract(as_of, extract_customers(conn, as_of), extract_orders(conn, as_of),
                       extract_events(conn, as_of))


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
