"""Event-triggered playbooks: new orders in the warehouse reach the triggered playbook, for those
customers only, once; the Prefect events carry no customer data."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from infra.settings import SHIPPED_PLAYBOOKS
from infra.warehouse.bulk import utcnow
from infra.warehouse.schema import touches
from tests.conftest import add_first_buyers, make_world

pytestmark = pytest.mark.slow
PLAYBOOK = str(SHIPPED_PLAYBOOKS / "new_customer_onboarding.yaml")  # trigger: order.placed
NEW = ["N1", "N2", "N3"]


def _first_orders(engine, ids, at):
    add_first_buyers(engine, dict.fromkeys(ids, at), at - dt.timedelta(days=1))


def test_new_orders_trigger_the_playbook_for_their_customers_once(prefect_harness, sqlite_url, monkeypatch):
    from flows.relay import relay_flow

    monkeypatch.setenv("LIFECYCLE_DB_URL", sqlite_url)
    engine = make_world(sqlite_url, customers=1200, seed=4)
    _first_orders(engine, NEW, utcnow() - dt.timedelta(minutes=5))

    out = relay_flow(playbooks=[PLAYBOOK], mode="run")
    assert out["windows"]["order.placed"]["events"] == 3
    [run] = out["runs"]
    assert run["playbook"] == "new_customer_onboarding" and run["triggered_by"] == 3
    with engine.connect() as conn:
        rows = conn.execute(select(touches.c.customer_id, touches.c.status)).all()
    assert {c for c, _ in rows} <= set(NEW) and rows, "only the customers behind the events are considered"
    sent = {c for c, s in rows if s == "sent"}
    assert sent and sent <= set(NEW)

    again = relay_flow(playbooks=[PLAYBOOK], mode="run")  # nothing new: no run, nothing sent twice
    assert again["runs"] == [] and again["windows"]["order.placed"]["events"] == 0
    with engine.connect() as conn:
        assert len(conn.execute(select(touches.c.customer_id)).all()) == len(rows)


def test_with_a_server_the_relay_emits_one_event_per_window_without_customer_data(prefect_harness, sqlite_url,
                                                                                  monkeypatch):
    import flows.relay as relay_module

    monkeypatch.setenv("LIFECYCLE_DB_URL", sqlite_url)
    engine = make_world(sqlite_url, customers=300, seed=4)
    _first_orders(engine, NEW, utcnow() - dt.timedelta(minutes=5))
    emitted = []
    monkeypatch.setattr(relay_module, "emit_window", lambda *a: emitted.append(a))
    out = relay_module.relay_flow(playbooks=[PLAYBOOK], mode="emit")
    [(event_type, start, end, count)] = emitted
    assert event_type == "order.placed" and count == 3 and start < end and out["runs"] == []
    with engine.connect() as conn:
        assert conn.execute(select(touches)).all() == []  # the deployment's trigger runs it, not the relay


def test_a_broken_triggered_playbook_is_reported_and_does_not_stall_the_others(prefect_harness, sqlite_url,
                                                                              monkeypatch, tmp_path):
    from flows.relay import relay_flow

    monkeypatch.setenv("LIFECYCLE_DB_URL", sqlite_url)
    engine = make_world(sqlite_url, customers=300, seed=4)
    _first_orders(engine, NEW, utcnow() - dt.timedelta(minutes=5))
    broken = tmp_path / "broken" / "welcome.yaml"
    broken.parent.mkdir()
    broken.write_text("name: welcome\ntrigger: {event: order.placed}\nsegmnts: []\n")
    out = relay_flow(playbooks=[str(broken), PLAYBOOK], mode="run")
    assert len(out["broken"]) == 1 and "welcome.yaml" in out["broken"][0]
    assert [r["playbook"] for r in out["runs"]] == ["new_customer_onboarding"]
