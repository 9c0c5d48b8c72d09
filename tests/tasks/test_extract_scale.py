"""The million-customer read paths give the features the in-memory path gives, on SQLite and PostgreSQL.

Orders are read in chunks and aggregated with numpy, events are aggregated in SQL in two parts, and a
run may read one range of customer ids at a time: none of that may change a single feature.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from sqlalchemy import select

import tasks.extract as extract_module
from infra.warehouse.schema import customers, orders
from tasks.extract import Shard, extract_all
from tasks.features import build_features
from tasks.source import FrameSource
from tests.conftest import END, make_world

AS_OF = END - dt.timedelta(days=45)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, atol=1e-9)


@pytest.fixture
def world(any_url):
    engine = make_world(any_url, customers=700, seed=5)
    with engine.begin() as conn:  # orders of a customer the customers table does not know
        conn.execute(orders.insert(), [
            {"order_id": "X1", "customer_id": "ZZ-unknown", "ordered_at": dt.datetime(2026, 3, 1, 8), "amount": 10.5},
            {"order_id": "X2", "customer_id": "ZZ-unknown", "ordered_at": dt.datetime(2026, 4, 2, 9), "amount": 3.25},
        ])
    return engine


def test_chunked_reads_give_the_in_memory_features_whatever_the_chunk_size(world, monkeypatch):
    frames = FrameSource.from_warehouse(world)
    expected = build_features(frames.extract(AS_OF))
    default = extract_all(world, AS_OF)
    _same(build_features(default), expected)
    monkeypatch.setattr(extract_module, "CHUNK_ROWS", 37)  # many chunks, ids first seen in later ones
    small = extract_all(world, AS_OF)
    _same(build_features(small), expected)
    # the unknown customer's orders are aggregated too (the frame source sees them as a buyer)
    pd.testing.assert_frame_equal(small.orders, default.orders)
    unknown = small.orders.set_index("customer_id").loc["ZZ-unknown"]
    assert unknown.orders_total == 2 and unknown.monetary_total == pytest.approx(13.75)
    assert unknown.max_gap_days == pytest.approx((dt.datetime(2026, 4, 2, 9) - dt.datetime(2026, 3, 1, 8)).total_seconds() / 86400)


def test_shards_of_customer_ids_add_up_to_the_whole(world):
    whole = build_features(extract_all(world, AS_OF))
    with world.connect() as conn:
        ids = list(conn.execute(select(customers.c.customer_id).order_by(customers.c.customer_id)).scalars())
    cuts = [None, ids[len(ids) // 3], ids[2 * len(ids) // 3], None]
    parts = [build_features(extract_all(world, AS_OF, shard=Shard(lo, hi))) for lo, hi in zip(cuts, cuts[1:])]
    assert sum(len(p) for p in parts) == len(whole)
    assert all(len(p) for p in parts)
    _same(pd.concat(parts).loc[whole.index], whole)


def test_an_empty_warehouse_window_gives_empty_aggregates_not_errors(world):
    """As of a day before anyone signed up: no customers, orders or events; still a well-formed frame."""
    raw = extract_all(world, END - dt.timedelta(days=800))
    assert raw.customers.empty and raw.orders.empty and raw.events is not None and raw.events.empty
    assert build_features(raw).empty
