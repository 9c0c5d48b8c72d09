"""Incremental features: moved day by day from the kept state, they equal a full recompute exactly."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from sqlalchemy import func, select

from infra.warehouse.schema import feature_state, feature_watermark, orders
from tasks.extract import extract_all
from tasks.features import build_features
from tasks.incremental import extract_incremental
from tests.conftest import END, make_world

START = END - dt.timedelta(days=20)


def _same_as_full(engine, raw, day) -> None:
    full = extract_all(engine, day)
    pd.testing.assert_frame_equal(build_features(raw), build_features(full), check_exact=True)


def _mark(engine) -> dt.date:
    with engine.connect() as conn:
        value = conn.execute(select(feature_watermark.c.as_of)).scalar_one()
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


@pytest.fixture
def world(any_url):
    return make_world(any_url, customers=800, seed=8)


def test_day_by_day_and_across_gaps_the_state_gives_the_full_features(world):
    raw, how = extract_incremental(world, START)
    assert how == "full (no state yet)"
    _same_as_full(world, raw, START)
    day = START
    for step in (1, 1, 1, 2, 7, 1, 7):  # daily runs, a skipped day, a missed week
        day += dt.timedelta(days=step)
        raw, how = extract_incremental(world, day)
        assert how == "advanced", (day, how)
        _same_as_full(world, raw, day)
    assert day == END and _mark(world) == END
    raw, how = extract_incremental(world, END)  # a second playbook the same day reads the state as is
    assert how == "kept"
    _same_as_full(world, raw, END)


def test_the_state_keeps_only_changed_customers_rewritten_and_is_complete(world):
    extract_incremental(world, END - dt.timedelta(days=1))
    raw, _ = extract_incremental(world, END)
    with world.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(feature_state)).scalar_one()
    seen = set(raw.orders["customer_id"]) | set(raw.events["customer_id"])
    assert rows == len(seen)  # one row per customer with orders or recent events


def test_rows_arriving_late_make_the_next_run_recompute_everything(world):
    day = END - dt.timedelta(days=3)
    extract_incremental(world, day)
    with world.begin() as conn:  # an order dated before the state's day, loaded after it was kept
        cid = conn.execute(select(orders.c.customer_id).limit(1)).scalar_one()
        conn.execute(orders.insert().values(order_id="LATE1", customer_id=cid, amount=99.99,
                                            ordered_at=dt.datetime.combine(day - dt.timedelta(days=10), dt.time(12))))
    raw, how = extract_incremental(world, day + dt.timedelta(days=1))
    assert how == "full (rows arrived late)"
    _same_as_full(world, raw, day + dt.timedelta(days=1))
    raw, how = extract_incremental(world, day + dt.timedelta(days=2))  # and the new state moves on again
    assert how == "advanced"
    _same_as_full(world, raw, day + dt.timedelta(days=2))


def test_a_run_for_an_earlier_day_computes_in_full_and_leaves_the_state(world):
    extract_incremental(world, END)
    raw, how = extract_incremental(world, END - dt.timedelta(days=30))
    assert how == "full (as-of before the state)"
    _same_as_full(world, raw, END - dt.timedelta(days=30))
    assert _mark(world) == END
