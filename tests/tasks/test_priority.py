"""Two playbooks want the same customer on the same day: priority decides while the touch is undelivered."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from sqlalchemy import select, update

from flows.compiler import compile_file
from infra.settings import load_config
from infra.warehouse.db import open_warehouse, upgrade
from infra.warehouse.schema import consents, touches
from tasks.allocate import allocate_frame
from tasks.dispatch import dispatch_frame

AS_OF = dt.date(2026, 5, 1)
PLAYBOOK = """
name: NAME
model: none
segments:
  - name: everyone
    else: true
    tiers:
      - {channel: push, template: p.j2}
guardrails: {priority: PRIORITY}
"""
IDS = ["a", "b", "c"]


def plan_for(tmp_path, name: str, priority: int):
    folder = tmp_path / name
    (folder / "templates").mkdir(parents=True)
    (folder / "templates" / "p.j2").write_text("Hello from " + name)
    (folder / f"{name}.yaml").write_text(PLAYBOOK.replace("NAME", name).replace("PRIORITY", str(priority)))
    return compile_file(folder / f"{name}.yaml", load_config())


@pytest.fixture
def engine(sqlite_url):
    engine = open_warehouse(sqlite_url, create=True)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(consents.insert(), [{"customer_id": c, "channel": "push", "purpose": "marketing",
                                          "granted_at": dt.datetime(2025, 1, 1), "withdrawn_at": None} for c in IDS])
    return engine


def run(plan, engine, *, dry_run=False):
    selected = pd.DataFrame({"segment": "everyone", "timezone": "UTC", "churn_score": None, "first_name": None},
                            index=pd.Index(IDS, name="customer_id"))
    allocated = allocate_frame(selected, plan, AS_OF, engine)
    return dispatch_frame(allocated, plan, AS_OF, engine=engine, config=load_config(), run_id=plan.name,
                          model_version=None, dry_run=dry_run)


def ledger(engine) -> dict[tuple[str, str], tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(select(touches.c.playbook, touches.c.customer_id, touches.c.status, touches.c.reason))
        return {(p, c): (s, r) for p, c, s, r in rows}


def test_a_lower_priority_playbook_leaves_customers_a_higher_one_has_today(tmp_path, engine):
    high, low = plan_for(tmp_path, "high", 80), plan_for(tmp_path, "low", 20)
    assert run(high, engine).sent == {"push": 3}
    result = run(low, engine)
    assert result.sent == {} and result.dropped == {"priority": 3}
    assert {c: ledger(engine)[("low", c)] for c in IDS} == {c: ("dropped", "priority") for c in IDS}


def test_a_higher_priority_playbook_takes_over_undelivered_touches_but_not_delivered_ones(tmp_path, engine):
    high, low = plan_for(tmp_path, "high", 80), plan_for(tmp_path, "low", 20)
    run(low, engine)
    with engine.begin() as conn:  # b and c not delivered yet: b waits out quiet hours, c is planned
        conn.execute(update(touches).where(touches.c.customer_id == "b")
                     .values(status="deferred", claimed_by=None, claimed_at=None))
        conn.execute(update(touches).where(touches.c.customer_id == "c")
                     .values(status="planned", claimed_by=None, claimed_at=None))
    preview = run(high, engine, dry_run=True)
    assert preview.sent == {"push": 2} and ledger(engine)[("low", "b")] == ("deferred", None)  # dry run changes nothing
    result = run(high, engine)
    assert result.sent == {"push": 2} and result.dropped == {"priority": 1}
    book = ledger(engine)
    assert book[("low", "a")] == ("sent", None) and book[("high", "a")] == ("dropped", "priority")
    assert book[("low", "b")] == ("dropped", "priority") and book[("high", "b")] == ("sent", None)
    assert book[("low", "c")] == ("dropped", "priority") and book[("high", "c")] == ("sent", None)


def test_a_rival_touch_in_flight_is_not_taken_over(tmp_path, engine):
    high, low = plan_for(tmp_path, "high", 80), plan_for(tmp_path, "low", 20)
    run(low, engine)
    with engine.begin() as conn:  # another process has claimed a's touch and may be sending it now
        conn.execute(update(touches).where(touches.c.customer_id == "a")
                     .values(status="planned", claimed_by="other-run", claimed_at=dt.datetime.now()))
    result = run(high, engine)
    assert ledger(engine)[("high", "a")] == ("dropped", "priority")
    assert ledger(engine)[("low", "a")][0] == "planned"
    assert result.sent == {}  # b and c were already delivered by the lower-priority playbook: one touch a day
