"""The warehouse: tables from migrations, upgrades that keep data, clear errors for bad URLs."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from infra.errors import UsageError, WarehouseError
from infra.warehouse import schema
from infra.warehouse.db import head_revision, open_warehouse, require_customers, upgrade


def test_upgrade_creates_every_table_and_is_idempotent(any_url):
    engine = open_warehouse(any_url, create=True)
    assert upgrade(engine) == (None, head_revision())
    tables = set(inspect(engine).get_table_names())
    assert set(schema.metadata.tables) <= tables
    assert upgrade(engine) == (head_revision(), head_revision())


def test_migrations_match_the_schema_module(any_url):
    """What Alembic builds must be what schema.py describes, column for column."""
    engine = open_warehouse(any_url, create=True)
    upgrade(engine)
    insp = inspect(engine)
    for table in schema.metadata.sorted_tables:
        built = {c["name"]: c["nullable"] for c in insp.get_columns(table.name)}
        declared = {c.name: c.nullable for c in table.columns}
        assert built == declared, table.name


def test_upgrade_keeps_existing_data(sqlite_url):
    engine = open_warehouse(sqlite_url, create=True)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(schema.customers.insert().values(
            customer_id="C1", signed_up_at=__import__("datetime").datetime(2025, 1, 1), timezone="UTC"))
    upgrade(engine)
    assert require_customers(engine) == 1


def test_unknown_revision_is_refused(sqlite_url):
    engine = open_warehouse(sqlite_url, create=True)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(WarehouseError, match="9999"):
        upgrade(engine)


def test_missing_sqlite_file_is_not_created_by_readers(tmp_path):
    path = tmp_path / "nope.db"
    with pytest.raises(WarehouseError, match="no warehouse at") as err:
        open_warehouse(f"sqlite:///{path}")
    assert "lifecycle demo" in err.value.hint
    assert not path.exists()


def test_unreachable_database_is_one_clear_error():
    with pytest.raises(WarehouseError, match=r"cannot connect to the warehouse at postgresql://nobody:\*\*\*@127.0.0.1:1/x: .*refused"):
        open_warehouse("postgresql://nobody:secret@127.0.0.1:1/x")


def test_password_never_appears_in_errors():
    with pytest.raises(WarehouseError) as err:
        open_warehouse("postgresql://nobody:hunter2@127.0.0.1:1/x")
    assert "hunter2" not in err.value.render()


def test_not_a_url_is_a_usage_error():
    with pytest.raises(UsageError, match="not a database URL"):
        open_warehouse("warehouse.db")


def test_empty_warehouse_says_what_to_run(sqlite_url):
    engine = open_warehouse(sqlite_url, create=True)
    upgrade(engine)
    with pytest.raises(WarehouseError, match="no customers") as err:
        require_customers(engine)
    assert "lifecycle data generate" in err.value.hint
