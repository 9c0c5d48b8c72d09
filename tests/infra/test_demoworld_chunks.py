"""Big demo worlds are drawn and loaded in chunks of customers: one consistent world, whatever the chunking."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from sqlalchemy import text

from infra.demoworld import generate_world, iter_world, load_world
from infra.warehouse.db import open_warehouse

END = dt.date(2026, 11, 30)
TABLES = ("customers", "orders", "events", "consents")


@pytest.fixture(scope="module")
def chunked():
    return generate_world(3000, days=365, seed=11, end=END, chunk_customers=700)


def test_a_world_that_fits_in_one_chunk_is_drawn_as_before():
    """The chunk size only matters once a world needs more than one chunk."""
    one = generate_world(1200, days=365, seed=11, end=END)
    same = generate_world(1200, days=365, seed=11, end=END, chunk_customers=1200)
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(one, name), getattr(same, name))
    split = generate_world(1200, days=365, seed=11, end=END, chunk_customers=500)
    assert not split.orders["ordered_at"].equals(one.orders["ordered_at"])  # the chunking did apply


def test_chunks_make_one_consistent_world(chunked):
    c = chunked.customers
    assert list(c["customer_id"]) == [f"C{i:07d}" for i in range(1, 3001)]
    assert c["signed_up_at"].is_monotonic_increasing  # ids follow sign-up order across chunks
    assert c["email"].dropna().is_unique and c["phone"].dropna().is_unique
    assert chunked.orders["order_id"].is_unique
    assert chunked.orders["order_id"].str.fullmatch(r"O\d{9}").all()
    known = set(c["customer_id"])
    for name in ("orders", "events", "consents"):
        assert set(getattr(chunked, name)["customer_id"]) <= known, name
    signup = c.set_index("customer_id")["signed_up_at"]
    o = chunked.orders
    assert (o["ordered_at"] >= o["customer_id"].map(signup)).all()


def test_chunked_world_is_reproducible_and_as_busy_as_an_unchunked_one(chunked):
    again = generate_world(3000, days=365, seed=11, end=END, chunk_customers=700)
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(chunked, name), getattr(again, name))
    whole = generate_world(3000, days=365, seed=11, end=END)
    for name in ("orders", "events", "consents"):
        ratio = len(getattr(chunked, name)) / len(getattr(whole, name))
        assert 0.85 < ratio < 1.15, (name, ratio)


def test_streamed_load_writes_the_same_rows_as_the_world_in_memory(tmp_path, chunked):
    engine = open_warehouse(f"sqlite:///{tmp_path / 'w.db'}", create=True)
    counts = load_world(engine, iter_world(3000, days=365, seed=11, end=END, chunk_customers=700))
    assert counts == {name: len(getattr(chunked, name)) for name in TABLES}
    back = pd.read_sql("SELECT order_id, customer_id, amount FROM orders ORDER BY order_id", engine)
    expected = chunked.orders[["order_id", "customer_id", "amount"]].sort_values("order_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(back, expected)
    with engine.connect() as conn:  # indexes dropped for the load are back
        names = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'index'"))}
    assert {"ix_orders_customer_time", "ix_events_customer_time", "ix_consents_customer"} <= names
