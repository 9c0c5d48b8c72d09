"""Features: values a reader can check by hand, and nothing after the as-of date leaks in."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from infra.warehouse.db import open_warehouse, upgrade
from infra.warehouse.schema import customers, events, orders
from tasks.extract import extract_all
from tasks.features import FEATURE_COLUMNS, build_features, days_to_birthday

AS_OF = dt.date(2026, 3, 31)


def at(days_before: float) -> dt.datetime:
    """A timestamp `days_before` days before the end of the as-of day."""
    return dt.datetime(2026, 4, 1) - dt.timedelta(days=days_before)


@pytest.fixture
def engine(sqlite_url):
    engine = open_warehouse(sqlite_url, create=True)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(customers.insert(), [
            {"customer_id": "A", "signed_up_at": at(400), "timezone": "Asia/Shanghai", "member_tier": "gold",
             "points": 120, "birthday": dt.date(1990, 4, 2)},
            {"customer_id": "B", "signed_up_at": at(10), "timezone": "Europe/London", "member_tier": None,
             "points": None, "birthday": None},
            {"customer_id": "LATE", "signed_up_at": at(-5), "timezone": "UTC", "member_tier": None,
             "points": None, "birthday": None},  # signs up after as-of
        ])
        conn.execute(orders.insert(), [
            {"order_id": "o1", "customer_id": "A", "ordered_at": at(300), "amount": 100.0},
            {"order_id": "o2", "customer_id": "A", "ordered_at": at(60), "amount": 50.0},
            {"order_id": "o3", "customer_id": "A", "ordered_at": at(10.5), "amount": 25.5},
            {"order_id": "future", "customer_id": "A", "ordered_at": at(-1), "amount": 999.0},
        ])
        conn.execute(events.insert(), [
            *({"customer_id": "A", "occurred_at": at(40 + i), "type": "app.visit", "channel": "app"} for i in range(10)),
            *({"customer_id": "A", "occurred_at": at(5 + i), "type": "app.visit", "channel": "app"} for i in range(4)),
            {"customer_id": "A", "occurred_at": at(2), "type": "message.open", "channel": "sms"},
            {"customer_id": "A", "occurred_at": at(-2), "type": "message.open", "channel": "sms"},
        ])
    return engine


def test_hand_checked_values(engine):
    f = build_features(extract_all(engine, AS_OF))
    assert list(f.index) == ["A", "B"]  # LATE had not signed up yet
    a, b = f.loc["A"], f.loc["B"]
    assert (a.orders_total, a.orders_30d, a.orders_90d, a.orders_365d) == (3, 1, 2, 3)
    assert a.monetary_total == pytest.approx(175.5) and a.monetary_90d == pytest.approx(75.5)
    assert a.recency_days == 10 and a.first_order_days == 300
    assert a.avg_order_value == pytest.approx(58.5)
    assert (a.visits_30d, a.visits_prev_30d, a.opens_30d) == (4, 10, 1)
    assert a.engagement_30d == 5 and a.engagement_prev_30d == 10
    assert a.engagement_change == pytest.approx(-0.5)
    assert a.days_to_birthday == 2 and a.tenure_days == 400 and a.points == 120
    assert b.orders_total == 0 and pd.isna(b.recency_days) and pd.isna(b.avg_order_value)
    assert pd.isna(b.engagement_change) and pd.isna(b.days_to_birthday) and b.points == 0
    assert set(FEATURE_COLUMNS) <= set(f.columns)


def test_data_after_as_of_changes_nothing(engine):
    before = build_features(extract_all(engine, AS_OF))
    with engine.begin() as conn:
        conn.execute(orders.insert().values(order_id="o9", customer_id="B", ordered_at=at(-3), amount=10.0))
    after = build_features(extract_all(engine, AS_OF))
    pd.testing.assert_frame_equal(before, after)


def test_birthdays_including_29_february():
    born = pd.Series([dt.date(2000, 2, 29), dt.date(1985, 12, 31), dt.date(1970, 3, 1), None], index=list("abcd"))
    got = days_to_birthday(born, dt.date(2027, 2, 27))
    assert list(got[:3]) == [1, 307, 2]  # 2027 is not a leap year: 29 Feb counts as 28 Feb
    assert pd.isna(got["d"])
