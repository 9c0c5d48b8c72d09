"""Rows another tool wrote that no step can hold: `run`, `plan`, `explain` and `kpis` leave them out and go on.

Before, one order dated 0001-01-01 made every `lifecycle run` die in extract (OutOfBoundsDatetime, retried
twice), an infinite amount made `explain` raise OverflowError and `kpis` fail in matplotlib, and a
timezone 'America' (a folder of zones) crashed quiet hours.
"""

from __future__ import annotations

import datetime as dt
import os

import pytest
from sqlalchemy import text

from flows.cli import main
from infra.settings import SHIPPED_PLAYBOOKS, load_config
from tests.conftest import END, make_world

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def damaged(prefect_harness, tmp_path_factory):
    """A world with a model, then bad rows written straight into it with SQL."""
    from flows.training import train

    url = f"sqlite:///{tmp_path_factory.mktemp('bad') / 'warehouse.db'}"
    engine = make_world(url, customers=1500, seed=9)
    train(engine, END, 90)
    with engine.connect() as conn:
        buyer = conn.execute(text("SELECT customer_id FROM orders ORDER BY ordered_at DESC LIMIT 1")).scalar_one()
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO orders (order_id, customer_id, ordered_at, amount) VALUES "
            f"('BAD1', '{buyer}', '0001-01-01 00:00:00', 10), ('BAD2', '{buyer}', '9999-12-31 00:00:00', 10), "
            f"('BAD3', '{buyer}', '{END} 09:00:00', 1e400), ('BAD4', '{buyer}', '{END} 10:00:00', -1e400)"))
        conn.execute(text("UPDATE customers SET timezone = 'America' WHERE customer_id IN "
                          "(SELECT customer_id FROM customers ORDER BY customer_id LIMIT 3)"))
        conn.execute(text("INSERT INTO customers (customer_id, signed_up_at, timezone) VALUES "
                          "('ZZ-ANCIENT', '0001-01-01 00:00:00', 'UTC')"))
    return url, engine, buyer


def test_a_run_leaves_bad_rows_out_and_counts_them_and_report_reads_it(damaged, monkeypatch, capsys):
    from flows.build import run_plan
    from flows.summary import format_summary
    from flows.compiler import compile_file

    url, engine, buyer = damaged
    monkeypatch.setenv("LIFECYCLE_DB_URL", url)
    path = SHIPPED_PLAYBOOKS / "churn_winback.yaml"
    summary = run_plan(compile_file(path, load_config()), str(path), END - dt.timedelta(days=20), dry_run=False,
                       model_version=None)
    assert summary["bad_rows"] == {"orders": 4, "customers": 1, "customers.timezone": 3}
    assert sum(summary["segments"].values()) > 0 and not summary["failed_steps"]
    assert ("left out, rows no step can hold (the log names their keys): customers 1, customers.timezone 3, "
            "orders 4") in format_summary(summary)
    # an infinite amount inside the goal window is no conversion worth infinity in the report
    with engine.begin() as conn:
        held = conn.execute(text("SELECT customer_id FROM touches WHERE status = 'held_out' LIMIT 1")).scalar_one()
        conn.execute(text(f"INSERT INTO orders (order_id, customer_id, ordered_at, amount) VALUES "
                          f"('BAD5', '{held}', '{END - dt.timedelta(days=15)} 09:00:00', 1e400)"))
    assert main(["report", "churn_winback", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "incremental:" in out and "inf" not in out and "nan" not in out


def test_plan_explain_and_kpis_go_on(damaged, tmp_path, capsys):
    url, _, buyer = damaged
    assert main(["plan", "churn_winback", "--as-of", END.isoformat(), "--db", url]) == 0
    assert "projected cost:" in capsys.readouterr().out
    assert main(["explain", buyer, "--as-of", END.isoformat(), "--db", url, "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert "Infinity" not in out and "NaN" not in out
    folder = tmp_path / "kpis"
    assert main(["kpis", "--db", url, "--out", str(folder)]) == 0
    capsys.readouterr()
    assert (folder / "monthly.png").read_bytes()[:4] == b"\x89PNG" and (folder / "cohorts.png").exists()
    assert f"{END:%Y-%m}" in (folder / "kpis.json").read_text()  # the period ends at the last real order
    assert os.path.getsize(folder / "kpis.html") > 0
