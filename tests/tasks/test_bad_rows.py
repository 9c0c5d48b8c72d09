"""Rows another tool wrote that no step can hold are left out of every read, counted and named.

Written with SQL into a generated world (as a tool writing straight into the warehouse would), each
was once the end of every run: an order dated 0001-01-01 (OutOfBoundsDatetime in extract) or
9999-12-31 (the "last order day"), an infinite amount (OverflowError in explain, matplotlib in kpis),
a timezone that is a folder of zones (IsADirectoryError in quiet hours).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from infra.warehouse import limits
from tasks import guardrails, kpis
from tasks.extract import extract_all, find_bad_rows, find_bad_zones, last_order_day, left_out
from tasks.incremental import extract_incremental
from tasks.lookup import customer_features
from tests.conftest import END, make_world

AS_OF = END - dt.timedelta(days=20)


def _ids(engine) -> tuple[str, str, str, str]:
    with engine.connect() as conn:
        buyers = conn.execute(text("SELECT DISTINCT customer_id FROM orders ORDER BY customer_id LIMIT 3")).scalars().all()
        other = conn.execute(text("SELECT customer_id FROM customers WHERE birthday IS NOT NULL ORDER BY customer_id "
                                  "DESC LIMIT 1")).scalar_one()
    return (*buyers, other)


def _damage(engine, buyer: str, second: str, zoned: str, born: str) -> None:
    """What a careless tool writes: impossible dates, infinite or NaN amounts, odd zones and birthdays."""
    pg = engine.dialect.name == "postgresql"
    infinite = "'NaN'" if pg else "1e400"  # PostgreSQL's NUMERIC(12, 2) holds NaN but no infinity
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO orders (order_id, customer_id, ordered_at, amount) VALUES "
            f"('BAD1', '{buyer}', '0001-01-01 00:00:00', 10), ('BAD2', '{second}', '9999-12-31 00:00:00', 10), "
            f"('BAD3', '{buyer}', '{AS_OF - dt.timedelta(days=3)} 10:00:00', {infinite})"))
        if not pg:  # SQLite keeps whatever it is given: text in a number or time column
            conn.execute(text(f"INSERT INTO orders (order_id, customer_id, ordered_at, amount) VALUES "
                              f"('BAD4', '{buyer}', 'someday', 5), ('BAD5', '{second}', '{AS_OF} 09:00:00', 'n/a')"))
        conn.execute(text("INSERT INTO customers (customer_id, signed_up_at, timezone) VALUES "
                          "('ZZ-ANCIENT', '0001-01-01 00:00:00', 'UTC')"))
        conn.execute(text(f"UPDATE customers SET timezone = 'America' WHERE customer_id = '{zoned}'"))
        conn.execute(text(f"UPDATE customers SET timezone = 'Mars/Olympus_Mons' WHERE customer_id = '{second}'"))
        conn.execute(text(f"UPDATE customers SET birthday = '0001-01-01' WHERE customer_id = '{born}'"))


def test_bad_rows_are_left_out_of_every_read_and_counted(any_url):
    engine = make_world(any_url, customers=400, seed=11)
    buyer, second, zoned, born = _ids(engine)
    before = extract_all(engine, AS_OF)
    features_before = customer_features(engine, buyer, AS_OF)
    kpis_before = kpis.compute(engine)
    last_before = last_order_day(engine)
    assert find_bad_rows(engine) == ({}, [])

    _damage(engine, buyer, second, zoned, born)
    after = extract_all(engine, AS_OF)
    pd.testing.assert_frame_equal(after.orders, before.orders)
    pd.testing.assert_frame_equal(after.events, before.events)
    expected = before.customers.copy()
    expected.loc[expected["customer_id"] == born, "birthday"] = pd.NaT  # read as unknown
    for cid, zone in ((zoned, "America"), (second, "Mars/Olympus_Mons")):  # kept as written; judged in UTC
        expected.loc[expected["customer_id"] == cid, "timezone"] = zone
    pd.testing.assert_frame_equal(after.customers, expected)
    assert "ZZ-ANCIENT" not in set(after.customers["customer_id"])

    counts, lines = find_bad_rows(engine)
    bad_orders = 3 if engine.dialect.name == "postgresql" else 5
    assert counts == {"orders": bad_orders, "customers": 1, "customers.birthday": 1}
    assert lines[0].startswith(f"orders: {bad_orders} rows with ordered_at outside 1900-01-01 to 2200-01-01 or an "
                               "amount that is not a finite number") and "(order_id 'BAD1', 'BAD2', 'BAD3'" in lines[0]
    assert "customers: 1 row with signed_up_at outside 1900-01-01 to 2200-01-01: left out (customer_id " \
           "'ZZ-ANCIENT')" in lines[1]
    assert find_bad_zones(after.customers)[0] == {"customers.timezone": 2}
    # runs in shards count over the whole warehouse instead, with the same result
    assert left_out(engine) == {**counts, "customers.timezone": 2}

    # the same rows are left out of one customer's features (explain), the KPIs and the last order day
    pd.testing.assert_frame_equal(customer_features(engine, buyer, AS_OF), features_before)
    assert last_order_day(engine) == last_before
    computed = kpis.compute(engine)
    pd.testing.assert_frame_equal(computed.monthly, kpis_before.monthly)
    pd.testing.assert_frame_equal(computed.cohorts, kpis_before.cohorts)
    pd.testing.assert_frame_equal(computed.retention, kpis_before.retention)


def test_the_incremental_state_leaves_out_the_same_rows(any_url):
    engine = make_world(any_url, customers=400, seed=12)
    buyer, second, zoned, born = _ids(engine)
    _damage(engine, buyer, second, zoned, born)
    now = dt.datetime.combine(END, dt.time(12))
    first, how = extract_incremental(engine, AS_OF - dt.timedelta(days=2), now=now)
    assert how.startswith("full")
    # a bad row arrives inside the window the next day reads: the state moved forward leaves it out too
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO orders (order_id, customer_id, ordered_at, amount) VALUES "
                          f"('BAD9', '{second}', '{AS_OF} 08:00:00', "
                          f"{chr(39) + 'NaN' + chr(39) if engine.dialect.name == 'postgresql' else '1e400'})"))
    moved, how = extract_incremental(engine, AS_OF, now=now)
    assert how == "advanced"
    full = extract_all(engine, AS_OF)
    for part in ("orders", "events", "customers"):
        pd.testing.assert_frame_equal(getattr(moved, part), getattr(full, part))
    assert np.isfinite(full.orders["monetary_total"]).all()


def test_an_unknown_timezone_is_judged_in_utc_not_a_crash():
    zones = pd.Series(["America", "Mars/Base", "a" * 300, "../../etc/passwd", "", None, "Asia/Shanghai"])
    at = dt.datetime(2026, 6, 1, 22, 30, tzinfo=dt.UTC)  # 22:30 UTC; 06:30 the next morning in Shanghai
    quiet = guardrails.in_quiet_hours(zones, at, _quiet("21:00", "08:00"))
    assert quiet.tolist() == [True] * 7
    late = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)  # noon UTC, 20:00 in Shanghai
    assert guardrails.in_quiet_hours(zones, late, _quiet("19:00", "08:00")).tolist() == [False] * 6 + [True]
    assert limits.zone_mask(zones).tolist() == [False] * 6 + [True]


def _quiet(start: str, end: str):
    from flows.plan import QuietHours

    return QuietHours(start=start, end=end, action="defer")


@pytest.mark.parametrize("value, ok", [("1899-12-31 23:59:59", False), ("1900-01-01 00:00:00", True),
                                       ("2199-12-31 23:59:59", True), ("2200-01-01 00:00:00", False)])
def test_the_window_is_what_limits_says(value, ok):
    assert bool(limits.in_window(pd.Series(pd.to_datetime([value])))[0]) is ok
