"""Quiet hours with `action: defer`: the touch waits in the ledger and goes out once, when it is due,
unless something that matters changed in the meantime."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import select, update

from infra.settings import load_config, outbox_dir
from infra.warehouse.db import open_warehouse, upgrade
from infra.warehouse.schema import consents, suppressions, touches
from tasks.allocate import choose_tiers
from tasks.deferred import deliver_due_touches
from tasks.dispatch import dispatch_frame
from tasks.guardrails import send_instant
from tests.tasks.test_guardrails import customers, everyone_consents, make_plan

AS_OF = dt.date(2026, 6, 30)
DUE = dt.datetime(2026, 6, 30, 7, 0)  # 08:00 in London (BST), when the 22:00-08:00 quiet hours end


@pytest.fixture
def world(tmp_path, sqlite_url):
    """Three London customers deferred at 10:00 Shanghai (03:00 London), with consents on record."""
    engine = open_warehouse(sqlite_url, create=True)
    upgrade(engine)
    plan = make_plan(tmp_path, holdout=0, quiet="defer")
    frame = customers(3, tz="Europe/London")
    granted = {g for g in everyone_consents(frame) if g[1] != "wecom"}  # no advisor chats: SMS it is
    with engine.begin() as conn:
        conn.execute(consents.insert(), [
            {"customer_id": c, "channel": ch, "purpose": p, "granted_at": dt.datetime(2025, 1, 1)}
            for c, ch, p in granted])
    out = choose_tiers(frame, plan, granted, send_at=send_instant(plan, AS_OF))
    result = dispatch_frame(out, plan, AS_OF, engine=engine, config=load_config(), run_id="r",
                            model_version=None, dry_run=False)
    return engine, plan, result


def sms_outbox() -> list[dict]:
    path = outbox_dir() / "sms.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def rows(engine) -> dict[str, tuple]:
    t = touches.c
    with engine.connect() as conn:
        return {r.customer_id: r for r in conn.execute(select(t.customer_id, t.status, t.reason, t.due_at,
                                                                t.payload, t.cost, t.skipped, t.variant)
                                                          .where(t.playbook == "guarded"))}


def test_a_deferred_touch_waits_for_the_end_of_quiet_hours_then_goes_once(world):
    engine, plan, result = world
    assert result.deferred == 3 and not result.sent.get("sms") and sms_outbox() == []
    ledger = rows(engine)
    assert {r.status for r in ledger.values()} == {"deferred"}
    assert {r.due_at for r in ledger.values()} == {DUE}
    assert all(r.skipped == "0:no_consent" for r in ledger.values())
    assert all(r.cost == {"coupon": 10, "gift": 0}[r.variant] for r in ledger.values())

    early = deliver_due_touches(engine, load_config(), now=DUE - dt.timedelta(minutes=1))
    assert sum(early.sent.values()) == 0 and sms_outbox() == []

    due = deliver_due_touches(engine, load_config(), now=DUE + dt.timedelta(minutes=5))
    assert due.sent == {"sms": 3}
    sent = sms_outbox()
    assert sorted(m["customer_id"] for m in sent) == ["C000000", "C000001", "C000002"]
    assert all(m["body"].startswith("Hi") for m in sent)
    assert {r.status for r in rows(engine).values()} == {"sent"}

    again = deliver_due_touches(engine, load_config(), now=DUE + dt.timedelta(minutes=30))
    assert sum(again.sent.values()) == 0 and len(sms_outbox()) == 3


def test_consent_withdrawn_while_waiting_wins(world):
    engine, _, _ = world
    with engine.begin() as conn:
        conn.execute(update(consents).where(consents.c.customer_id == "C000001", consents.c.channel == "sms")
                     .values(withdrawn_at=DUE - dt.timedelta(hours=2)))
        conn.execute(suppressions.insert().values(customer_id="C000002", channel=None, reason="complaint",
                                                  created_at=DUE - dt.timedelta(hours=1)))
    result = deliver_due_touches(engine, load_config(), now=DUE + dt.timedelta(minutes=5))
    assert result.sent == {"sms": 1} and result.dropped == {"no_consent": 1, "suppressed": 1}
    assert [m["customer_id"] for m in sms_outbox()] == ["C000000"]
    ledger = rows(engine)
    assert (ledger["C000001"].status, ledger["C000001"].reason) == ("dropped", "no_consent")
    assert (ledger["C000002"].status, ledger["C000002"].reason) == ("dropped", "suppressed")


def test_a_touch_that_missed_its_window_expires_instead_of_arriving_at_night(world):
    engine, _, _ = world
    evening = dt.datetime(2026, 6, 30, 20, 59)  # 21:59 in London: the window is still open
    assert deliver_due_touches(engine, load_config(), now=evening).sent == {"sms": 3}

    engine2 = world_again(engine)
    late = dt.datetime(2026, 6, 30, 21, 0)  # 22:00 in London: quiet again, the window has passed
    result = deliver_due_touches(engine2, load_config(), now=late)
    assert result.dropped == {"expired": 3} and not result.sent
    assert {(r.status, r.reason) for r in rows(engine2).values()} == {("dropped", "expired")}
    assert len(sms_outbox()) == 3  # only the first delivery


def world_again(engine):
    """Put the three touches back to deferred, as if they had never been delivered."""
    with engine.begin() as conn:
        conn.execute(update(touches).values(status="deferred", claimed_by=None, claimed_at=None))
    return engine


def test_the_frequency_cap_counts_what_was_sent_while_waiting(world):
    engine, plan, _ = world
    now = DUE + dt.timedelta(minutes=5)
    with engine.begin() as conn:  # another playbook reached C000000 twice this week meanwhile (cap: 2 in 7 days)
        conn.execute(touches.insert(), [
            {"touch_key": f"other{i}", "playbook": "other", "playbook_version": "1", "plan_hash": "x",
             "step": "main", "as_of": AS_OF - dt.timedelta(days=i), "customer_id": "C000000", "status": "sent",
             "created_at": now, "updated_at": now} for i in range(2)])
    result = deliver_due_touches(engine, load_config(), now=now)
    assert result.sent == {"sms": 2} and result.dropped == {"frequency_cap": 1}
    assert rows(engine)["C000000"].reason == "frequency_cap"


def test_a_deliverer_that_died_mid_way_is_finished_by_the_next_without_repeats(world, monkeypatch):
    engine, _, _ = world
    now = DUE + dt.timedelta(minutes=5)
    with engine.begin() as conn:  # the dead run had moved one touch to planned and claimed it, then died
        conn.execute(update(touches).where(touches.c.customer_id == "C000000")
                     .values(status="planned", claimed_by="dead", claimed_at=now - dt.timedelta(hours=1)))
    result = deliver_due_touches(engine, load_config(), now=now)
    assert result.sent == {"sms": 3}
    assert sorted(m["customer_id"] for m in sms_outbox()) == ["C000000", "C000001", "C000002"]
    deliver_due_touches(engine, load_config(), now=now)
    assert len(sms_outbox()) == 3


def test_a_replayed_day_has_its_deferrals_delivered_hour_by_hour(world):
    from tasks.deferred import replay_deliveries
    from tasks.guardrails import is_live

    engine, plan, _ = world
    now = dt.datetime(2026, 11, 24, 3, 0, tzinfo=dt.UTC)
    assert not is_live(plan, AS_OF, now) and is_live(plan, now.date(), now)
    start = dt.datetime.combine(AS_OF, dt.time())
    result = replay_deliveries(engine, load_config(), start, start + dt.timedelta(days=1))
    assert result.sent == {"sms": 3} and len(sms_outbox()) == 3
