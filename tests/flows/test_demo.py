"""`lifecycle demo`: builds a world once, keeps it afterwards, and says what happened in plain words,
including what each playbook caused in the month after its run (the world answers back)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from flows.cli import main
from infra.demoresponse import ORDER_PREFIX
from infra.warehouse.db import open_warehouse
from infra.warehouse.schema import customers, model_registry, orders, touches

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_next_steps() -> list[list[str]]:
    """The `lifecycle report` and `lifecycle run` lines of README's "Then:" block, as arguments."""
    block = README.read_text().split("Then:", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].split() for line in block.splitlines()]
    return [words[1:] for words in lines if words and words[0].endswith("lifecycle") and words[1] in ("run", "report")]


def test_readmes_next_steps_run_today_after_the_demo_not_a_fixed_day():
    """A fixed --as-of in README goes stale: the demo runs as of 30 days before its data ends (today)."""
    steps = readme_next_steps()
    assert ["run", "churn_winback"] in steps and ["report", "churn_winback"] in steps
    assert not [s for s in steps if "--as-of" in s], steps


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
        last_order = conn.execute(select(func.max(orders.c.ordered_at))).scalar_one()
        responses = conn.execute(select(func.count()).select_from(orders).where(
            orders.c.order_id.like(f"{ORDER_PREFIX}%"))).scalar_one()
        order_count = conn.execute(select(func.count()).select_from(orders)).scalar_one()
    assert ledger_rows > 0
    # the playbooks ran a month before the data ends, and the world answered in that month
    as_of = last_order.date() - dt.timedelta(days=30)
    assert f"churn_winback v1 as of {as_of}" in first
    assert f"responses: over the 30 days after {as_of}, the touches persuaded {responses:,} orders" in first
    assert responses > 0
    caused = first[first.index("What the playbooks caused"):]
    winback = re.search(r"churn_winback: ([\d,]+) treated vs ([\d,]+) held out: conversion [\d.]+% vs [\d.]+%, "
                        r"lift ([+-][\d.]+) pts \(95% CI ([+-][\d.]+) to ([+-][\d.]+)", caused)
    assert winback, caused
    low, high = float(winback.group(4)), float(winback.group(5))
    assert low <= float(winback.group(3)) <= high
    assert "simulated true effect" in caused and "ROI" in caused
    assert "birthday_care: " in caused and "no holdout, so no lift" in caused

    # README's next steps make sense after the demo: its report, a dry run and a run for today
    for args in readme_next_steps():
        assert main([*args, "--db", sqlite_url]) == 0, args
        out = capsys.readouterr().out
        assert "warning: model" not in out, out  # the demo's model learned from data up to its day, not after
        if args[:2] == ["report", "churn_winback"]:
            assert out.startswith(f"churn_winback v1: as-of {as_of} to {as_of};") and "money in CNY" in out
    with engine.connect() as conn:  # today's run is a month after the demo's: its customers may enter again
        days = conn.execute(select(touches.c.as_of).where(touches.c.playbook == "churn_winback").distinct()).all()
        ledger_rows = conn.execute(select(func.count()).select_from(touches)).scalar_one()
    assert len(days) == 2 and max(d[0] for d in days) > as_of + dt.timedelta(days=29)

    assert main(["demo", "--customers", "99", "--db", sqlite_url]) == 0
    second = capsys.readouterr().out
    assert "keeping the 1,500 customers already in the warehouse" in second
    assert "model: using churn-" in second and "already sent earlier for this date" in second
    assert f"responses: already simulated for the touches of {as_of}" in second
    assert "churn_winback: " in second[second.index("What the playbooks caused"):]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(customers)).scalar_one() == 1500
        assert conn.execute(select(func.count()).select_from(model_registry)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(touches)).scalar_one() == ledger_rows
        assert conn.execute(select(func.count()).select_from(orders)).scalar_one() == order_count
