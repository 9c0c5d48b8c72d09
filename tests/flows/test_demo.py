"""`lifecycle demo`: builds a world once, keeps it afterwards, and says what happened in plain words."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from flows.cli import main
from infra.warehouse.db import open_warehouse
from infra.warehouse.schema import customers, model_registry, touches

pytestmark = pytest.mark.slow


def test_demo_generates_trains_runs_then_keeps_the_world(prefect_harness, sqlite_url, capsys):
    assert main(["demo", "--customers", "1500", "--db", sqlite_url]) == 0
    first = capsys.readouterr().out
    assert "world: 1,500 customers" in first and "model: trained churn-" in first
    for name in ("churn_winback", "dormant_wakeup", "birthday_care"):
        assert f"{name} v1 as of" in first
    assert "touches sent:" in first and "outbox sms:" in first
    assert "http://127.0.0.1:4200/runs/flow-run/" in first

    engine = open_warehouse(sqlite_url)
    with engine.connect() as conn:
        ledger_rows = conn.execute(select(func.count()).select_from(touches)).scalar_one()
    assert ledger_rows > 0

    assert main(["demo", "--customers", "99", "--db", sqlite_url]) == 0
    second = capsys.readouterr().out
    assert "keeping the 1,500 customers already in the warehouse" in second
    assert "model: using churn-" in second and "already sent earlier for this date" in second
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(customers)).scalar_one() == 1500
        assert conn.execute(select(func.count()).select_from(model_registry)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(touches)).scalar_one() == ledger_rows
