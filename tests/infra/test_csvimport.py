"""CSV import: every problem reported by line and column, nothing written unless the whole file is good."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from infra.errors import UsageError
from infra.warehouse.csvimport import import_file, read
from infra.warehouse.db import open_warehouse, upgrade
from infra.warehouse.schema import customers, orders


@pytest.fixture
def engine(any_url):
    engine = open_warehouse(any_url, create=True)
    upgrade(engine)
    return engine


def _count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_bad_rows_are_reported_by_line_and_nothing_is_imported(engine, tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("order_id,customer_id,ordered_at,amount,note\n"
                    "o1,c1,2026-03-01,12.50,fine\n"
                    "o2,c2,03/12/2026,12,bad date\n"
                    "o3,c3,2026-03-02,¥12,currency\n"
                    "o4,,2026-03-02,1,no customer\n"
                    "o5,c5,2026-03-02,-4.00,refund\n"
                    "o1,c6,2026-03-03,1,duplicate id\n")
    with pytest.raises(UsageError) as err:
        import_file(engine, "orders", path)
    text = err.value.render()
    assert err.value.exit_code == 2 and "nothing was imported" in text
    for line in ("orders.csv:3: column ordered_at: not an ISO 8601 date or datetime: '03/12/2026'",
                 "orders.csv:4: column amount: not a number: '¥12'",
                 "orders.csv:5: column customer_id: empty (required)",
                 "orders.csv:6: column amount: negative (-4.00): refunds are not orders",
                 "orders.csv:7: column order_id: 'o1' repeats line 2"):
        assert line in text
    assert _count(engine, orders) == 0


def test_many_problems_are_capped_with_a_count(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("customer_id,ordered_at,amount\n" + "c1,yesterday,1\n" * 30)
    with pytest.raises(UsageError) as err:
        read("orders", path)
    text = err.value.render()
    assert "30 problems" in text and "... and 10 more problems" in text and "orders.csv:21:" in text


def test_good_file_loads_with_timezones_generated_ids_and_column_mapping(engine, tmp_path):
    path = tmp_path / "shop.csv"
    path.write_text("buyer,when,amount,store\n"
                    "c1,2026-03-01T10:00:00+08:00,12.5,north\n"
                    "c1,2026-03-01,12.5,north\n"
                    "c2,2026-03-02T23:30:00Z,0,south\n")
    assert import_file(engine, "orders", path, {"buyer": "customer_id", "when": "ordered_at"}) == 3
    with engine.connect() as conn:
        rows = conn.execute(select(orders).order_by(orders.c.ordered_at)).mappings().all()
    assert rows[0]["ordered_at"] == dt.datetime(2026, 3, 1, 0, 0) and rows[1]["ordered_at"] == dt.datetime(2026, 3, 1, 2, 0)
    assert len({r["order_id"] for r in rows}) == 3 and all(r["order_id"].startswith("csv-") for r in rows)
    # the same file again: its generated ids are already there, so nothing is imported twice
    with pytest.raises(UsageError, match="is already in the warehouse"):
        import_file(engine, "orders", path, {"buyer": "customer_id", "when": "ordered_at"})
    assert _count(engine, orders) == 3


def test_customers_and_missing_columns(engine, tmp_path):
    path = tmp_path / "customers.csv"
    path.write_text("customer_id,signed_up_at,member_tier,points\nc1,2025-01-01,Gold,120\nc2,2025-02-01,,\n")
    assert import_file(engine, "customers", path) == 2
    with engine.connect() as conn:
        tiers = dict(conn.execute(select(customers.c.customer_id, customers.c.member_tier)).all())
    assert tiers == {"c1": "gold", "c2": None}
    bad = tmp_path / "no_amount.csv"
    bad.write_text("customer_id,ordered_at\nc1,2026-01-01\n")
    with pytest.raises(UsageError, match=r"no_amount.csv:1: missing column amount"):
        read("orders", bad)
