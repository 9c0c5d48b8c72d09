"""Allocation and dispatch: consent decides the tier, the ledger makes reruns safe, dry runs write nothing."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from flows.compiler import compile_file
from infra.settings import load_config, outbox_dir
from infra.warehouse.db import open_warehouse, upgrade
from infra.warehouse.schema import consents, touches
from tasks.allocate import active_consents, choose_tiers
from tasks.dispatch import DispatchResult, dispatch_frame, merge_results

AS_OF = dt.date(2026, 5, 1)
PLAYBOOK = """
name: tiers
model: none
segments:
  - name: vip
    when: "monetary_365d >= 1000"
    tiers:
      - {channel: advisor, template: a.j2}
      - {channel: sms, template: s.j2}
      - {channel: push, template: p.j2}
  - name: rest
    else: true
    tiers:
      - {channel: push, template: p.j2}
"""


@pytest.fixture
def plan(tmp_path):
    (tmp_path / "templates").mkdir()
    for name, text in {"a.j2": "Advisor hello {{ customer_id }}", "s.j2": "SMS {{ segment }}",
                       "p.j2": "Push {{ first_name or 'friend' }}"}.items():
        (tmp_path / "templates" / name).write_text(text)
    (tmp_path / "tiers.yaml").write_text(PLAYBOOK)
    return compile_file(tmp_path / "tiers.yaml", load_config())


def frame(rows: dict[str, tuple[str, float]]) -> pd.DataFrame:
    """Selected customers: id -> (segment, monetary)."""
    return pd.DataFrame(
        {"segment": [s for s, _ in rows.values()], "monetary_365d": [m for _, m in rows.values()],
         "first_name": [None] * len(rows), "churn_score": [None] * len(rows), "churn_reasons": [None] * len(rows)},
        index=pd.Index(list(rows), name="customer_id"),
    )


def test_customers_fall_through_to_the_first_tier_they_consented_to(plan):
    selected = frame({"v1": ("vip", 2000), "v2": ("vip", 2000), "v3": ("vip", 2000), "r1": ("rest", 0)})
    granted = {("v1", "wecom", "marketing"), ("v1", "sms", "marketing"), ("v2", "sms", "marketing"),
               ("v3", "sms", "service"), ("r1", "push", "marketing")}
    out = choose_tiers(selected, plan, granted)
    assert out.loc["v1", "channel"] == "advisor"
    assert out.loc["v2", "channel"] == "sms" and out.loc["v2", "tier"] == 1
    # a service-only consent is not a marketing consent
    assert out.loc["v3", "tier"] == -1 and out.loc["v3", "reason"] == "no_consent"
    assert out.loc["r1", "channel"] == "push"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # plan is immutable
@given(st.lists(st.tuples(st.sampled_from(["wecom", "sms", "push"]), st.sampled_from(["marketing", "service"])),
                max_size=6), st.sampled_from(["vip", "rest"]))
def test_no_touch_without_consent_and_always_the_first_eligible_tier(plan, grants, seg):
    selected = frame({"c": (seg, 5000)})
    granted = {("c", ch, p) for ch, p in grants}
    out = choose_tiers(selected, plan, granted).loc["c"]
    tiers = next(s for s in plan.segments if s.name == seg).tiers
    eligible = [i for i, t in enumerate(tiers) if ("c", t.consent_channel, t.purpose) in granted]
    assert out["tier"] == (eligible[0] if eligible else -1)


def test_withdrawn_consent_is_not_active(sqlite_url):
    engine = open_warehouse(sqlite_url, create=True)
    upgrade(engine)
    granted, withdrawn = dt.datetime(2025, 1, 1), dt.datetime(2026, 1, 1)
    with engine.begin() as conn:
        conn.execute(consents.insert(), [
            {"customer_id": "a", "channel": "sms", "purpose": "marketing", "granted_at": granted, "withdrawn_at": None},
            {"customer_id": "b", "channel": "sms", "purpose": "marketing", "granted_at": granted, "withdrawn_at": withdrawn},
        ])
    found = active_consents(engine, ["a", "b"], {("sms", "marketing")}, dt.datetime(2026, 5, 1))
    assert ("a", "sms", "marketing") in found and ("b", "sms", "marketing") not in found and len(found) == 1
    assert list(found.member(np.array(["a", "b", "c"], dtype=object), ("sms", "marketing"))) == [True, False, False]


def outbox_lines(channel: str) -> list[dict]:
    path = outbox_dir() / f"{channel}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def engine(sqlite_url):
    engine = open_warehouse(sqlite_url, create=True)
    upgrade(engine)
    return engine


def allocated(plan):
    selected = frame({"v1": ("vip", 2000), "v2": ("vip", 2000), "r1": ("rest", 0), "r2": ("rest", 0)})
    granted = {("v1", "wecom", "marketing"), ("v2", "push", "marketing"), ("r1", "push", "marketing")}
    return choose_tiers(selected, plan, granted)


def run(plan, engine, *, dry_run=False):
    return dispatch_frame(allocated(plan), plan, AS_OF, engine=engine, config=load_config(), run_id="r",
                          model_version=None, dry_run=dry_run)


def ledger(engine) -> dict[str, tuple]:
    with engine.connect() as conn:
        rows = conn.execute(select(touches.c.customer_id, touches.c.status, touches.c.channel, touches.c.reason))
        return {r[0]: tuple(r[1:]) for r in rows}


def test_drops_written_beside_the_delivery_are_all_in_the_ledger_when_the_step_ends(plan, any_url, monkeypatch):
    """On PostgreSQL many drops are written on a connection of their own while the touches go out; the
    step ends with every decision in the ledger, and a failure there fails the step (the rerun
    repeats nothing sent)."""
    from tasks import claims, dispatch

    monkeypatch.setattr(dispatch, "BACKGROUND_DROPS", 1)
    engine = open_warehouse(any_url, create=True)
    upgrade(engine)
    result = run(plan, engine)
    assert result.sent == {"advisor": 1, "push": 2}
    assert ledger(engine)["r2"] == ("dropped", None, "no_consent") and len(ledger(engine)) == 4

    real = claims.insert_absent

    def drops_fail(engine, rows, run_columns=None):
        if (rows["status"] == "dropped").all():
            raise ConnectionError("the connection for the drops was lost")
        return real(engine, rows, run_columns)

    monkeypatch.setattr(claims, "insert_absent", drops_fail)
    with engine.begin() as conn:
        conn.execute(touches.delete())
    if engine.dialect.name == "postgresql":
        with pytest.raises(ConnectionError, match="drops was lost"):
            run(plan, engine)
        assert "r2" not in ledger(engine) and ledger(engine)["v1"][0] == "sent"
        monkeypatch.setattr(claims, "insert_absent", real)
        again = run(plan, engine)  # the rerun writes the drops and sends nothing twice
        assert again.sent == {} and again.already_sent == 3 and ledger(engine)["r2"][0] == "dropped"


def test_dispatch_writes_every_decision_and_delivers_each_touch_once(plan, engine):
    result = run(plan, engine)
    assert result.sent == {"advisor": 1, "push": 2}
    assert ledger(engine) == {"v1": ("sent", "advisor", None), "v2": ("sent", "push", None),
                              "r1": ("sent", "push", None), "r2": ("dropped", None, "no_consent")}
    push = outbox_lines("push")
    assert sorted(m["customer_id"] for m in push) == ["r1", "v2"]
    assert {m["body"] for m in push} == {"Push friend"}
    assert outbox_lines("advisor")[0]["body"] == "Advisor hello v1"
    # the outbox numbers tiers from 1, as plan, explain and report do; the ledger's column counts from 0
    assert {m["customer_id"]: m["tier"] for m in push} == {"v2": 3, "r1": 1} and outbox_lines("advisor")[0]["tier"] == 1
    with engine.connect() as conn:
        assert dict(conn.execute(select(touches.c.customer_id, touches.c.tier).where(
            touches.c.channel == "push")).all()) == {"v2": 2, "r1": 0}

    again = run(plan, engine)  # same as-of date: nothing is sent twice
    assert again.sent == {} and again.already_sent == 3
    assert len(outbox_lines("push")) == 2 and len(ledger(engine)) == 4


def test_a_touch_in_flight_at_a_crash_is_delivered_on_rerun_with_the_same_key(plan, engine):
    run(plan, engine)
    with engine.begin() as conn:  # as if the process died after claiming and delivering, before marking
        conn.execute(update(touches).where(touches.c.customer_id == "r1").values(status="planned"))
    key = next(m["touch_key"] for m in outbox_lines("push") if m["customer_id"] == "r1")
    held = run(plan, engine)  # the dead run's claim still holds: nobody delivers it yet
    assert held.sent == {"push": 0} and held.claimed_elsewhere == 1
    with engine.begin() as conn:  # the lease runs out
        conn.execute(update(touches).where(touches.c.customer_id == "r1")
                     .values(claimed_at=dt.datetime(2000, 1, 1)))
    result = run(plan, engine)
    assert result.sent == {"push": 1}
    resent = [m for m in outbox_lines("push") if m["customer_id"] == "r1"]
    assert [m["touch_key"] for m in resent] == [key, key]  # a consumer can drop the repeat by key
    assert ledger(engine)["r1"][0] == "sent"


def test_dry_run_writes_nothing_and_previews_messages(plan, engine, caplog):
    with caplog.at_level("INFO", logger="lifecycle.dispatch"):
        result = run(plan, engine, dry_run=True)
    assert result.sent == {"advisor": 1, "push": 2}
    assert {p["body"] for p in result.previews} == {"Advisor hello v1", "Push friend"}
    assert ledger(engine) == {} and outbox_lines("push") == []
    # its log says what it would do, never that it sent
    (line,) = [r.getMessage() for r in caplog.records if r.name == "lifecycle.dispatch"]
    assert line == ("dispatch tiers: dry run: would send {'push': 2, 'advisor': 1}, would not touch "
                    "{'no_consent': 1}, would defer 0; nothing written or sent")


def test_suppressed_customers_are_dropped_with_their_reason(plan, engine):
    from infra.warehouse.schema import suppressions
    from tasks.allocate import allocate_frame

    now = dt.datetime(2026, 1, 1)
    with engine.begin() as conn:
        conn.execute(consents.insert(), [{"customer_id": c, "channel": ch, "purpose": "marketing", "granted_at": now}
                                         for c in ("v1", "v2", "r1") for ch in ("wecom", "sms", "push")])
        conn.execute(suppressions.insert(), [
            {"customer_id": "v1", "channel": "wecom", "reason": "complaint", "created_at": now},  # advisor only
            {"customer_id": "r1", "channel": None, "reason": "hard_bounce", "created_at": now},  # every channel
        ])
    out = allocate_frame(frame({"v1": ("vip", 2000), "v2": ("vip", 2000), "r1": ("rest", 0)}), plan, AS_OF, engine)
    assert out.loc["v1", "channel"] == "sms"  # falls through past the suppressed channel
    assert out.loc["v2", "channel"] == "advisor"
    assert out.loc["r1", "tier"] == -1 and out.loc["r1", "reason"] == "suppressed"
    result = dispatch_frame(out, plan, AS_OF, engine=engine, config=load_config(), run_id="r", model_version=None,
                            dry_run=False)
    assert result.dropped == {"suppressed": 1} and ledger(engine)["r1"] == ("dropped", None, "suppressed")


def test_a_torn_outbox_line_from_a_killed_run_does_not_swallow_the_next_record(plan, engine):
    path = outbox_dir() / "push.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"touch_key": "half a rec')  # a run was killed in the middle of a write
    run(plan, engine)
    lines = path.read_text().splitlines()
    assert lines[0] == '{"touch_key": "half a rec'
    delivered = [json.loads(line) for line in lines[1:]]
    assert sorted(m["customer_id"] for m in delivered) == ["r1", "v2"]


def test_dispatch_results_of_shards_or_hours_add_up_to_one():
    a = DispatchResult(sent={"sms": 2}, already_sent=1, dropped={"no_consent": 1}, outboxes={"sms": "/o/sms.jsonl"},
                       segment_channel={"high": {"sms": 2}}, segment_tier={"high": {"tier 1 sms": 2}}, offer_cost=1.5)
    b = DispatchResult(sent={"sms": 1, "push": 3}, dropped={"no_consent": 2, "capacity": 1}, deferred=2,
                       outboxes={"sms": "/o/sms.jsonl", "push": "/o/push.jsonl"}, failed={"refused": 1},
                       segment_channel={"high": {"push": 3}, "low": {"sms": 1}}, segment_tier={"low": {"tier 2 sms": 1}},
                       offer_cost=2.0, retried=4, claimed_elsewhere=1)
    merged = merge_results([a, b])
    assert merged == DispatchResult(
        sent={"sms": 3, "push": 3}, already_sent=1, dropped={"no_consent": 3, "capacity": 1}, deferred=2,
        outboxes={"sms": "/o/sms.jsonl", "push": "/o/push.jsonl"}, failed={"refused": 1}, retried=4,
        claimed_elsewhere=1, segment_channel={"high": {"sms": 2, "push": 3}, "low": {"sms": 1}},
        segment_tier={"high": {"tier 1 sms": 2}, "low": {"tier 2 sms": 1}}, offer_cost=3.5)
    assert merge_results([]) == DispatchResult()


def test_a_message_that_cannot_be_rendered_fails_alone_and_holds_nothing(tmp_path, engine):
    """A template that passes check but fails for some customers (here: no first name to upper-case) makes
    those touches failed with the reason; the rest go out, nothing stays planned or claimed. Deferred
    touches render when decided, so theirs fail at once too, not when they are due."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "p.j2").write_text("Hi {{ first_name.upper() }}")
    (tmp_path / "names.yaml").write_text(PLAYBOOK.replace("template: a.j2", "template: p.j2")
                                         .replace("template: s.j2", "template: p.j2").replace("name: tiers", "name: names"))
    plan = compile_file(tmp_path / "names.yaml", load_config())
    selected = frame({"a": ("rest", 0), "b": ("rest", 0), "c": ("rest", 0), "d": ("rest", 0)})
    selected["first_name"] = ["Ann", None, "Cy", None]
    out = choose_tiers(selected, plan, {(c, "push", "marketing") for c in "abcd"})
    out["deferred"] = [False, False, False, True]
    out["due_at"] = pd.Timestamp("2026-05-02 01:00")
    result = dispatch_frame(out, plan, AS_OF, engine=engine, config=load_config(), run_id="r", model_version=None,
                            dry_run=False)
    assert result.sent == {"push": 2} and result.failed == {"render_error": 2} and result.deferred == 0
    with engine.connect() as conn:
        rows = {r.customer_id: r for r in conn.execute(select(touches.c.customer_id, touches.c.status,
                                                              touches.c.reason, touches.c.claimed_by))}
    assert {c: r.status for c, r in rows.items()} == {"a": "sent", "b": "failed", "c": "sent", "d": "failed"}
    assert rows["b"].reason.startswith("render_error: ") and "upper" in rows["b"].reason
    assert sorted(m["body"] for m in outbox_lines("push")) == ["Hi ANN", "Hi CY"]
    dry = dispatch_frame(out, plan, AS_OF + dt.timedelta(days=1), engine=engine, config=load_config(), run_id="r",
                         model_version=None, dry_run=True)
    assert any(p["body"].startswith("(would fail: render_error") for p in dry.previews)
