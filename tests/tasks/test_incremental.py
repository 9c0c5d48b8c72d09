"""Incremental features: moved day by day from the kept state, they equal a full recompute exactly."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from sqlalchemy import select, update

from infra.warehouse.schema import feature_blocks, feature_watermark, orders
from tasks.extract import extract_all, extract_customers
from tasks.features import build_features
from tasks import incremental
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


def test_the_state_is_kept_in_ordered_blocks_of_buyers_and_of_recent_interactors(world, monkeypatch):
    monkeypatch.setattr(incremental, "BLOCK_CUSTOMERS", 150)
    extract_incremental(world, END - dt.timedelta(days=1))
    raw, _ = extract_incremental(world, END)
    with world.connect() as conn:
        blocks = conn.execute(select(feature_blocks.c.kind, feature_blocks.c.first_customer,
                                     feature_blocks.c.last_customer, feature_blocks.c.customers)
                              .order_by(feature_blocks.c.kind, feature_blocks.c.block)).all()
    for kind, frame in (("orders", raw.orders), ("events", raw.events)):
        mine = [b for b in blocks if b.kind == kind]
        ids = sorted(frame["customer_id"])
        assert len(mine) == -(-len(ids) // 150) > 1
        assert sum(b.customers for b in mine) == len(ids)
        assert mine[0].first_customer == ids[0] and mine[-1].last_customer == ids[-1]
        assert all(a.last_customer < b.first_customer for a, b in zip(mine, mine[1:]))


def test_a_damaged_state_is_recomputed_not_trusted(world):
    extract_incremental(world, END - dt.timedelta(days=1))
    with world.begin() as conn:  # e.g. a block truncated by a disk problem
        conn.execute(update(feature_blocks).where(feature_blocks.c.kind == "events", feature_blocks.c.block == 0).values(data=b"x\x01 not deflated"))
    raw, how = extract_incremental(world, END)
    assert how.startswith("full (the kept state is damaged, events block 0")
    _same_as_full(world, raw, END)
    raw, how = extract_incremental(world, END)  # and the state rewritten from the full extract is good again
    assert how == "kept"
    _same_as_full(world, raw, END)


def test_a_state_kept_by_another_run_while_this_one_read_it_is_not_mixed_with_the_old_mark(world, monkeypatch):
    """Two playbooks scheduled at the same time: run B reads the watermark (day S), then run A keeps the
    state moved to S+1 (watermark and blocks in one transaction), then B reads the blocks. B must not move
    A's S+1 blocks forward from S (every new row would count twice): it notices and recomputes."""
    day = END - dt.timedelta(days=4)
    extract_incremental(world, day)
    read_blocks = incremental._read_state
    raced = []

    def a_saves_meanwhile(conn):
        if not raced:
            raced.append(True)
            assert extract_incremental(world, day + dt.timedelta(days=1))[1] == "advanced"  # run A
        return read_blocks(conn)

    monkeypatch.setattr(incremental, "_read_state", a_saves_meanwhile)
    raw, how = extract_incremental(world, day + dt.timedelta(days=2))  # run B
    assert raced and how == "full (another run kept a new state while this one read it)"
    _same_as_full(world, raw, day + dt.timedelta(days=2))
    monkeypatch.setattr(incremental, "_read_state", read_blocks)
    raw, how = extract_incremental(world, day + dt.timedelta(days=3))  # the state B kept moves on
    assert how == "advanced"
    _same_as_full(world, raw, day + dt.timedelta(days=3))


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


def test_a_run_for_a_day_not_yet_over_keeps_the_state_at_the_last_complete_day(world):
    """A deployment's run for today: rows keep arriving until midnight, so the state stays at yesterday
    and today is added in memory; a later run the same day, with more rows, is still exact."""
    extract_incremental(world, END - dt.timedelta(days=3))
    during = dt.datetime.combine(END, dt.time(15))  # 15:00 on the as-of day
    raw, how = extract_incremental(world, END, now=during)
    assert how == "advanced" and _mark(world) == END - dt.timedelta(days=1)
    _same_as_full(world, raw, END)
    with world.begin() as conn:  # an order placed later that afternoon
        cid = conn.execute(select(orders.c.customer_id).limit(1)).scalar_one()
        conn.execute(orders.insert().values(order_id="LATER1", customer_id=cid, amount=12.5,
                                            ordered_at=dt.datetime.combine(END, dt.time(16))))
    raw, how = extract_incremental(world, END, now=during + dt.timedelta(hours=2))
    assert how == "advanced"  # not "rows arrived late": yesterday's counts did not change
    _same_as_full(world, raw, END)
    raw, how = extract_incremental(world, END + dt.timedelta(days=1), now=during + dt.timedelta(days=1))
    assert how == "advanced" and _mark(world) == END
    _same_as_full(world, raw, END + dt.timedelta(days=1))


def test_the_first_run_for_today_starts_the_state_at_yesterday(world, monkeypatch):
    """Aggregated once, at yesterday (kept), and moved on to today in memory: not aggregated twice."""
    full_reads = []
    monkeypatch.setattr(incremental, "extract_all", lambda engine, day, **kw: full_reads.append(day) or extract_all(engine, day, **kw))
    raw, how = extract_incremental(world, END, now=dt.datetime.combine(END, dt.time(10)))
    assert how == "full (no state yet)" and _mark(world) == END - dt.timedelta(days=1)
    assert full_reads == [END - dt.timedelta(days=1)]
    _same_as_full(world, raw, END)
    raw, how = extract_incremental(world, END, now=dt.datetime.combine(END, dt.time(11)))
    assert how == "advanced"
    _same_as_full(world, raw, END)


def test_a_dry_run_reads_the_kept_state_but_never_writes_it(world):
    raw, how = extract_incremental(world, END - dt.timedelta(days=2), save=False)
    assert how == "full (no state yet)"
    with world.connect() as conn:
        assert conn.execute(select(feature_watermark)).first() is None
        assert conn.execute(select(feature_blocks)).first() is None
    extract_incremental(world, END - dt.timedelta(days=2))
    raw, how = extract_incremental(world, END, save=False)
    assert how == "advanced" and _mark(world) == END - dt.timedelta(days=2)
    _same_as_full(world, raw, END)


def test_a_state_kept_in_the_background_is_complete_before_the_next_read(world, monkeypatch):
    """The flow's extract keeps the moved state on a thread while the run goes on: a second playbook in
    the same process waits for it, so it finds the state already at the day instead of racing it."""
    extract_incremental(world, END - dt.timedelta(days=1))
    write = incremental._write_state
    started = []

    def slow_write(conn, o, e, c=None):
        started.append(True)
        import time
        time.sleep(0.5)
        write(conn, o, e, c)

    monkeypatch.setattr(incremental, "_write_state", slow_write)
    raw, how = extract_incremental(world, END, background=True)
    assert how == "advanced"
    raw, how = extract_incremental(world, END)  # waits for the save above, then reads it
    assert started and how == "kept" and _mark(world) == END
    _same_as_full(world, raw, END)


def test_a_background_save_that_fails_leaves_the_old_state_and_the_next_run_moves_it_on(world, monkeypatch, caplog):
    extract_incremental(world, END - dt.timedelta(days=2))

    def broken(conn, o, e, c=None):
        raise OSError("disk full")

    monkeypatch.setattr(incremental, "_write_state", broken)
    raw, how = extract_incremental(world, END - dt.timedelta(days=1), background=True)
    assert how == "advanced"
    incremental.wait_saved()
    assert "could not be kept" in caplog.text and _mark(world) == END - dt.timedelta(days=2)
    monkeypatch.undo()
    raw, how = extract_incremental(world, END)
    assert how == "advanced"
    _same_as_full(world, raw, END)


def _customers_read(monkeypatch) -> list[int]:
    """How many customer rows each read of the customers table returned."""
    sizes, real = [], incremental.extract_customers

    def counting(*args, **kwargs):
        frame = real(*args, **kwargs)
        sizes.append(len(frame))
        return frame

    monkeypatch.setattr(incremental, "extract_customers", counting)
    return sizes


def test_on_postgresql_the_next_run_reads_only_the_customers_written_since(pg_url, monkeypatch):
    from sqlalchemy import delete as sql_delete, insert

    from infra.warehouse.schema import customers

    engine = make_world(pg_url, customers=800, seed=8)
    extract_incremental(engine, END - dt.timedelta(days=2))
    with engine.connect() as conn:
        kinds = set(conn.execute(select(feature_blocks.c.kind)).scalars())
        xid = conn.execute(select(feature_watermark.c.customers_xid)).scalar_one()
        ids = list(conn.execute(select(customers.c.customer_id).order_by(customers.c.customer_id)).scalars())
    assert kinds == {"orders", "events", "customers"} and xid is not None

    with engine.begin() as conn:  # a tier change, a name removed, a sign-up moved past the day, a new customer
        conn.execute(update(customers).where(customers.c.customer_id == ids[3]).values(member_tier="gold", points=99))
        conn.execute(update(customers).where(customers.c.customer_id == ids[5]).values(first_name=None))
        conn.execute(update(customers).where(customers.c.customer_id == ids[7]).values(
            signed_up_at=dt.datetime.combine(END + dt.timedelta(days=5), dt.time())))
        conn.execute(insert(customers).values(customer_id=ids[10] + "a", signed_up_at=dt.datetime(2025, 1, 1),
                                              timezone="Asia/Shanghai", member_tier="silver", points=5,
                                              first_name="Ning"))
    sizes = _customers_read(monkeypatch)
    raw, how = extract_incremental(engine, END - dt.timedelta(days=1))
    assert how == "advanced" and sizes == [4], sizes  # the four rows written since, not 801
    with engine.connect() as conn:  # the customers as a full read gives them, row for row and type for type
        pd.testing.assert_frame_equal(raw.customers, extract_customers(conn, raw.as_of), check_exact=True)
    _same_as_full(engine, raw, END - dt.timedelta(days=1))
    assert ids[10] + "a" in set(raw.customers["customer_id"]) and ids[7] not in set(raw.customers["customer_id"])

    with engine.begin() as conn:  # a customer erased: the count tells, and everyone is read again
        conn.execute(sql_delete(customers).where(customers.c.customer_id == ids[20]))
    sizes.clear()
    raw, how = extract_incremental(engine, END)
    assert how == "advanced" and sizes == [0, 800], sizes
    assert ids[20] not in set(raw.customers["customer_id"])
    _same_as_full(engine, raw, END)


def test_a_state_kept_without_customers_reads_them_all_once_then_keeps_them(pg_url, monkeypatch):
    engine = make_world(pg_url, customers=800, seed=8)
    extract_incremental(engine, END - dt.timedelta(days=2))
    with engine.begin() as conn:  # as a state kept before customers were: no customer blocks, no horizon
        conn.execute(feature_blocks.delete().where(feature_blocks.c.kind == "customers"))
        conn.execute(update(feature_watermark).values(customers_xid=None))
    sizes = _customers_read(monkeypatch)
    raw, how = extract_incremental(engine, END - dt.timedelta(days=1))
    assert how == "advanced" and sizes == [800]
    _same_as_full(engine, raw, END - dt.timedelta(days=1))
    sizes.clear()
    raw, how = extract_incremental(engine, END)
    assert how == "advanced" and sizes == [0]
    _same_as_full(engine, raw, END)


def test_a_damaged_customers_block_is_recomputed_not_trusted(pg_url):
    import io
    import zlib

    import numpy as np

    engine = make_world(pg_url, customers=800, seed=8)
    extract_incremental(engine, END - dt.timedelta(days=1))
    with engine.connect() as conn:
        data = conn.execute(select(feature_blocks.c.data).where(feature_blocks.c.kind == "customers")).scalar_one()
    with np.load(io.BytesIO(zlib.decompress(data)), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["timezone.codes"] = arrays["timezone.codes"] + 50  # codes pointing past the stored values
    out = io.BytesIO()
    np.savez(out, **arrays)
    with engine.begin() as conn:
        conn.execute(update(feature_blocks).where(feature_blocks.c.kind == "customers")
                     .values(data=zlib.compress(out.getvalue())))
    raw, how = extract_incremental(engine, END)
    assert how.startswith("full (the kept state is damaged, customers block 0: timezone: codes out of range")
    _same_as_full(engine, raw, END)


def test_customers_whose_ids_the_database_sorts_otherwise_are_read_each_run_not_kept(pg_url, monkeypatch):
    """Under a linguistic collation 'b-1' sorts after 'b1' (PostgreSQL) but before it (Python): rows
    written later could not be put in place, so the customers are read whole each run, once."""
    from sqlalchemy import insert, text

    from infra.warehouse.schema import customers

    engine = make_world(pg_url, customers=300, seed=8)
    with engine.begin() as conn:
        conn.execute(text('ALTER TABLE customers ALTER COLUMN customer_id TYPE varchar(64) COLLATE "en-US-x-icu"'))
        conn.execute(insert(customers), [{"customer_id": c, "signed_up_at": dt.datetime(2025, 1, 1),
                                          "timezone": "UTC", "points": 1} for c in ("b1", "b-1", "B2")])
    extract_incremental(engine, END - dt.timedelta(days=1))
    with engine.connect() as conn:
        assert conn.execute(select(feature_watermark.c.customers_xid)).scalar_one() is None
        assert "customers" not in set(conn.execute(select(feature_blocks.c.kind)).scalars())
    sizes = _customers_read(monkeypatch)
    raw, how = extract_incremental(engine, END)
    assert how == "advanced" and sizes == [303]
    _same_as_full(engine, raw, END)
