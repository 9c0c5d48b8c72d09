"""Bulk loading: the same frame reads back the same on SQLite and PostgreSQL, gaps and dates included."""

from __future__ import annotations

import datetime as dt

import pandas as pd
from sqlalchemy import func, select

from infra.warehouse.bulk import bulk_insert
from infra.warehouse.db import open_warehouse, upgrade
from infra.warehouse.schema import customers


def test_gaps_dates_and_timestamps_round_trip(any_url):
    engine = open_warehouse(any_url, create=True)
    upgrade(engine)
    frame = pd.DataFrame({
        "customer_id": ["a", "b", "c"],
        "signed_up_at": pd.to_datetime(["2025-01-02 03:04:05", "2025-06-30 23:59:59", "2024-02-29 00:00:00"]),
        "timezone": ["Asia/Shanghai", "UTC", "Europe/London"],
        "points": [10.0, None, 3.0],  # an integer column with a gap arrives as floats
        "birthday": [dt.date(1990, 2, 28), None, dt.date(2000, 2, 29)],
        "first_name": ["Wei", None, "Ann, \"quoted\"\nnewline"],
    })
    with engine.begin() as conn:
        assert bulk_insert(conn, customers, frame) == 3
    with engine.connect() as conn:
        rows = {r.customer_id: r for r in conn.execute(select(customers))}
        later = conn.execute(select(customers.c.customer_id).where(
            customers.c.signed_up_at > dt.datetime(2025, 6, 30, 23, 59, 58))).scalars().all()
    assert rows["a"].signed_up_at == dt.datetime(2025, 1, 2, 3, 4, 5) and rows["a"].points == 10
    assert rows["b"].points is None and rows["b"].birthday is None and rows["b"].first_name is None
    assert rows["c"].birthday == dt.date(2000, 2, 29) and rows["c"].first_name == "Ann, \"quoted\"\nnewline"
    assert later == ["b"]  # stored timestamps compare correctly with bound ones


def test_insert_ignore_keeps_the_rows_already_there(any_url):
    from infra.warehouse.bulk import insert_ignore

    engine = open_warehouse(any_url, create=True)
    upgrade(engine)
    first = pd.DataFrame({"customer_id": ["a", "b"], "signed_up_at": pd.to_datetime(["2025-01-01", "2025-01-02"]),
                          "timezone": ["UTC", "UTC"], "first_name": ["Old A", "Old B"]})
    again = pd.DataFrame({"customer_id": ["b", "c"], "signed_up_at": pd.to_datetime(["2025-02-01", "2025-02-02"]),
                          "timezone": ["UTC", "UTC"], "first_name": ["New B", "New C"]})
    for frame in (first, again, again):  # the same batch twice, as a rerun would write it
        with engine.begin() as conn:
            insert_ignore(conn, customers, frame, ["customer_id"])
    with engine.connect() as conn:
        names = dict(conn.execute(select(customers.c.customer_id, customers.c.first_name)).all())
    assert names == {"a": "Old A", "b": "Old B", "c": "New C"}


def test_insert_ignore_binds_shared_columns_once_and_they_read_back_typed(any_url):
    """A run's ledger rows carry its playbook, day, times and priority as constants: stored in every row,
    with their types (a date compares as a date, a timestamp as a timestamp), and a key already there wins."""
    from infra.warehouse.bulk import insert_ignore
    from infra.warehouse.schema import touches

    engine = open_warehouse(any_url, create=True)
    upgrade(engine)
    day, now = dt.date(2026, 7, 1), dt.datetime(2026, 7, 1, 10, 0, 0, 123456)
    run = {"run_id": "r1", "playbook": "winback", "playbook_version": "3", "plan_hash": "h", "step": "main",
           "as_of": day, "model_version": None, "priority": 80, "created_at": now, "updated_at": now}
    rows = pd.DataFrame({"touch_key": ["k1", "k2"], "customer_id": ["a", "b"], "status": ["planned", "dropped"],
                         "reason": [None, "no_consent"], "tier": pd.array([0, None], dtype="Int64")})
    with engine.begin() as conn:
        insert_ignore(conn, touches, rows.iloc[:1], ["touch_key"], constants={**run, "run_id": "first"})
        insert_ignore(conn, touches, rows, ["touch_key"], constants=run)
    with engine.connect() as conn:
        got = {r.touch_key: r for r in conn.execute(select(touches))}
        on_day = conn.execute(select(func.count()).select_from(touches).where(
            touches.c.as_of == day, touches.c.created_at > dt.datetime(2026, 7, 1, 9, 59))).scalar_one()
    assert got["k1"].run_id == "first" and got["k2"].run_id == "r1"  # the row already there won
    assert got["k2"].as_of == day and got["k2"].created_at == now and got["k2"].priority == 80
    assert got["k2"].playbook == "winback" and got["k2"].model_version is None and got["k2"].tier is None
    assert got["k1"].tier == 0 and on_day == 2


def test_among_matches_in_on_both_databases(any_url):
    """`among` (one JSON parameter for a list of ids) selects, updates and negates exactly as `in_`,
    for ids with quotes, non-ASCII text and numbers-as-text, and for a list longer than a chunk."""
    from sqlalchemy import update

    from infra.warehouse.bulk import among

    engine = open_warehouse(any_url, create=True)
    upgrade(engine)
    ids = [f"c{i:05d}" for i in range(30_000)] + ["o'brien", 'say "hi"', "客户-7", "00042"]
    frame = pd.DataFrame({"customer_id": ids, "signed_up_at": pd.Timestamp("2025-01-01"), "timezone": "UTC"})
    with engine.begin() as conn:
        bulk_insert(conn, customers, frame)
    c = customers.c
    wanted = ids[::7] + ["o'brien", 'say "hi"', "客户-7", "00042", "absent", "42"]
    with engine.begin() as conn:
        got = set(conn.execute(select(c.customer_id).where(among(c.customer_id, wanted))).scalars())
        expected = set(conn.execute(select(c.customer_id).where(c.customer_id.in_(wanted))).scalars())
        conn.execute(update(customers).where(among(c.customer_id, ["客户-7", "c00001"])).values(timezone="Asia/Shanghai"))
        moved = set(conn.execute(select(c.customer_id).where(c.timezone == "Asia/Shanghai")).scalars())
        outside = conn.execute(select(func.count()).where(~among(c.customer_id, wanted))).scalar_one()
        none = conn.execute(select(c.customer_id).where(among(c.customer_id, []))).all()
    assert got == expected == set(wanted) & set(ids)
    assert moved == {"客户-7", "c00001"}
    assert outside == len(ids) - len(got)
    assert none == []


def test_among_without_sqlites_json_functions_falls_back_to_an_in_list(sqlite_url, monkeypatch):
    """An SQLite built without JSON1 still answers (with one parameter per id, as `in_` does)."""
    from infra.warehouse import bulk

    monkeypatch.setattr(bulk, "_sqlite_has_json", lambda: False)
    engine = open_warehouse(sqlite_url, create=True)
    upgrade(engine)
    frame = pd.DataFrame({"customer_id": ["a", "b", "c"], "signed_up_at": pd.Timestamp("2025-01-01"), "timezone": "UTC"})
    with engine.begin() as conn:
        bulk_insert(conn, customers, frame)
        stmt = select(customers.c.customer_id).where(bulk.among(customers.c.customer_id, ["c", "a", "z"]))
        assert "json_each" not in str(stmt.compile(engine))
        assert sorted(conn.execute(stmt).scalars()) == ["a", "c"]


def test_an_id_set_is_loaded_once_per_transaction_and_matches_like_in(any_url, monkeypatch):
    """Allocation's lookups share one set of ids: on PostgreSQL a temporary table, copied once per
    transaction (ids with tabs, backslashes and quotes intact) and gone when the transaction ends."""
    from sqlalchemy import text

    from infra.warehouse import bulk
    from infra.warehouse.bulk import IdSet, bulk_insert

    monkeypatch.setattr(bulk, "TEMP_IDS", 1)
    engine = open_warehouse(any_url, create=True)
    upgrade(engine)
    odd = ["tab\there", "back\\slash", "quote'd", "new\nline", "plain", "ünï"]
    with engine.begin() as conn:
        bulk_insert(conn, customers, pd.DataFrame({"customer_id": odd + ["other"], "timezone": "UTC",
                                                   "signed_up_at": pd.Timestamp("2025-01-01")}))
    ids = IdSet(odd + ["absent"])
    with engine.connect() as conn:
        first = [set(conn.execute(select(customers.c.customer_id).where(w)).scalars()) for w in ids.where(conn, customers.c.customer_id)]
        again = [set(conn.execute(select(customers.c.customer_id).where(w)).scalars()) for w in ids.where(conn, customers.c.customer_id)]
    assert set().union(*first) == set(odd) == set().union(*again)
    if engine.dialect.name == "postgresql":
        assert len(ids._loaded) == 1  # the second lookup joined the table the first one loaded
        with engine.connect() as conn:  # a new transaction: the old table is gone, a new one is loaded
            found = set().union(*(set(conn.execute(select(customers.c.customer_id).where(w)).scalars())
                                  for w in ids.where(conn, customers.c.customer_id)))
        with engine.connect() as conn:
            temp = conn.execute(text("SELECT count(*) FROM pg_tables WHERE tablename LIKE '\\_ids\\_%'")).scalar_one()
        assert found == set(odd) and len(ids._loaded) == 2 and temp == 0


def test_update_rows_overwrites_the_frames_columns_and_keeps_the_rest(any_url):
    from infra.warehouse.bulk import update_rows

    engine = open_warehouse(any_url, create=True)
    upgrade(engine)
    start = pd.DataFrame({"customer_id": ["a", "b"], "signed_up_at": pd.to_datetime(["2025-01-01", "2025-02-01"]),
                          "timezone": ["UTC", "UTC"], "points": [1, 2], "first_name": ["Wei", "Ann"]})
    with engine.begin() as conn:
        bulk_insert(conn, customers, start)
        update_rows(conn, customers, pd.DataFrame({
            "customer_id": ["a", "b", "zz"], "timezone": ["Asia/Shanghai", "Europe/Berlin", "UTC"],
            "points": pd.array([5, None, 9], dtype="Int64"),
            "signed_up_at": pd.to_datetime(["2024-12-31", None, "2025-01-01"])}), ["customer_id"], keep=["signed_up_at"])
    with engine.connect() as conn:
        rows = {r.customer_id: r for r in conn.execute(select(customers))}
    assert set(rows) == {"a", "b"}  # a row the table lacks is not added
    assert (rows["a"].timezone, rows["a"].points, rows["a"].signed_up_at) == ("Asia/Shanghai", 5, dt.datetime(2024, 12, 31))
    # a NULL clears a column, except in `keep` ones; columns the frame lacks stay as they were
    assert (rows["b"].timezone, rows["b"].points, rows["b"].signed_up_at) == ("Europe/Berlin", None, dt.datetime(2025, 2, 1))
    assert rows["b"].first_name == "Ann"
