"""Guardrails in allocation: holdout stable, capacity and budget never exceeded, caps and quiet hours respected."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.compiler import compile_file
from infra.settings import load_config
from tasks.allocate import choose_tiers
from tasks.dispatch import ledger_status
from tasks.guardrails import buckets, held_out, in_quiet_hours, send_instant

PLAYBOOK = """
name: guarded
model: none
schedule: {cron: "0 10 * * *", timezone: Asia/Shanghai}
segments:
  - name: vip
    when: "monetary_365d >= 1000"
    tiers:
      - {channel: advisor, template: a.j2, capacity: CAPACITY, offer: {coupon_pool: vip, unit_cost: 30}}
      - channel: sms
        template: s.j2
        offer: {coupon_pool: sms, unit_cost: 10}
        variants: [{name: coupon, split: 70}, {name: gift, split: 30, no_offer: true}]
      - {channel: push, template: p.j2}
guardrails:
  frequency_cap: {max: 2, days: 7}
  quiet_hours: {start: "22:00", end: "08:00", action: QUIET}
  budget: {amount: BUDGET, currency: CNY}
experiment: {holdout_percent: HOLDOUT}
"""


def make_plan(tmp_path, capacity=5, budget=500, holdout=10, quiet="drop"):
    (tmp_path / "templates").mkdir(exist_ok=True)
    for name in ("a.j2", "s.j2", "p.j2"):
        (tmp_path / "templates" / name).write_text("Hi {{ first_name or 'friend' }}")
    text = (PLAYBOOK.replace("CAPACITY", str(capacity)).replace("BUDGET", str(budget))
            .replace("HOLDOUT", str(holdout)).replace("QUIET", quiet))
    (tmp_path / "guarded.yaml").write_text(text)
    return compile_file(tmp_path / "guarded.yaml", load_config())


def customers(n: int, tz: str = "Asia/Shanghai") -> pd.DataFrame:
    ids = [f"C{i:06d}" for i in range(n)]
    return pd.DataFrame({"segment": "vip", "monetary_365d": 2000.0, "timezone": tz,
                         "churn_score": np.linspace(0.99, 0.5, n), "first_name": None},
                        index=pd.Index(ids, name="customer_id"))


def everyone_consents(frame: pd.DataFrame) -> set:
    return {(c, ch, "marketing") for c in frame.index for ch in ("wecom", "sms", "push")}


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    return make_plan(tmp_path_factory.mktemp("pb"))


def test_holdout_is_stable_and_close_to_its_percentage(plan):
    ids = [f"C{i:06d}" for i in range(20_000)]
    first, again = held_out(ids, plan), held_out(list(reversed(ids)), plan)[::-1]
    assert (first == again).all()
    assert 0.09 < first.mean() < 0.11
    out = choose_tiers(customers(2000), plan, everyone_consents(customers(2000)))
    assert (out["reason"] == "holdout").sum() == held_out(list(out.index), plan).sum()
    assert (out.loc[out["reason"] == "holdout", "tier"] == -1).all()
    assert set(ledger_status(out)[out["reason"].eq("holdout").fillna(False).to_numpy()]) == {"held_out"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(0, 300), capacity=st.integers(1, 50), budget=st.integers(1, 3000))
def test_capacity_and_budget_are_never_exceeded(tmp_path, n, capacity, budget):
    plan = make_plan(tmp_path, capacity=capacity, budget=budget, holdout=0)
    frame = customers(n)
    out = choose_tiers(frame, plan, everyone_consents(frame))
    assert (out["tier"] == 0).sum() <= capacity
    assert out["cost"].sum() <= budget
    advisor = out[out["tier"] == 0]
    if len(advisor) and (out["tier"] != 0).any():  # capacity goes to the highest churn scores
        assert advisor["churn_score"].min() >= out.loc[out["tier"] != 0, "churn_score"].max() or \
            (out["reason"] == "budget").any()
    # nobody is dropped while a free tier (push) remains open to them
    assert (out["tier"] >= 0).all()


def test_frequency_cap_counts_sends_across_playbooks(plan):
    frame = customers(4)
    recent = pd.Series({"C000000": 2, "C000001": 1})
    out = choose_tiers(frame, plan.model_copy(update={"experiment": None}), everyone_consents(frame), recent=recent)
    assert out.loc["C000000", "reason"] == "frequency_cap" and out.loc["C000000", "tier"] == -1
    assert out.loc["C000001", "tier"] == 0


def test_quiet_hours_in_the_customers_timezone(tmp_path):
    at = send_instant(make_plan(tmp_path), dt.date(2026, 6, 30))
    assert at.isoformat() == "2026-06-30T10:00:00+08:00"
    zones = pd.Series(["Asia/Shanghai", "Europe/London", "America/Los_Angeles", "Not/AZone"])
    from flows.plan import QuietHours

    assert list(in_quiet_hours(zones, at, QuietHours(start="22:00", end="08:00"))) == [False, True, False, True]  # unknown zone: judged in UTC
    frame = customers(3, tz="Europe/London")
    dropped = choose_tiers(frame, make_plan(tmp_path, holdout=0), everyone_consents(frame), send_at=at)
    assert (dropped["reason"] == "quiet_hours").all() and (dropped["tier"] == -1).all()
    deferred = choose_tiers(frame, make_plan(tmp_path, holdout=0, quiet="defer"), everyone_consents(frame), send_at=at)
    assert deferred["deferred"].all() and (deferred["tier"] == 0).all()
    assert set(ledger_status(deferred)) == {"deferred"}


def test_a_late_run_judges_quiet_hours_when_it_really_sends(tmp_path):
    plan = make_plan(tmp_path)
    scheduled = send_instant(plan, dt.date(2026, 6, 30))
    late = dt.datetime(2026, 6, 30, 15, 30, tzinfo=dt.UTC)  # 23:30 in Shanghai, the same day
    assert send_instant(plan, dt.date(2026, 6, 30), late) == late
    frame = customers(2)
    out = choose_tiers(frame, plan, everyone_consents(frame), send_at=send_instant(plan, dt.date(2026, 6, 30), late))
    assert (out["reason"] == "quiet_hours").all()  # 23:30 local is inside 22:00-08:00
    replay = dt.datetime(2026, 11, 24, 15, 30, tzinfo=dt.UTC)  # months later: a replay keeps the schedule
    assert send_instant(plan, dt.date(2026, 6, 30), replay) == scheduled


def test_variants_follow_their_splits_and_are_stable():
    b = buckets([f"C{i}" for i in range(10_000)], "variant", "x")
    assert ((b >= 0) & (b < 100)).all() and 0.68 < (b < 70).mean() < 0.72
    assert (buckets(["C1", "C2"], "variant", "x") == b[1:3]).all()


def test_every_decision_reaches_the_ledger_with_its_status_and_reason(tmp_path, sqlite_url):
    from sqlalchemy import select

    from infra.warehouse.db import open_warehouse, upgrade
    from infra.warehouse.schema import touches
    from tasks.dispatch import dispatch_frame

    engine = open_warehouse(sqlite_url, create=True)
    upgrade(engine)
    plan = make_plan(tmp_path, capacity=2, budget=40, holdout=30, quiet="defer")
    frame = customers(40)
    granted = {(c, ch, "marketing") for c in frame.index for ch in ("wecom", "sms")}  # no push consent
    capped = frame.index[~held_out(list(frame.index), plan)][-1]
    out = choose_tiers(frame, plan, granted, recent=pd.Series({capped: 5}))
    result = dispatch_frame(out, plan, dt.date(2026, 6, 30), engine=engine, config=load_config(), run_id="r",
                            model_version=None, dry_run=False)
    with engine.connect() as conn:
        rows = {r.customer_id: r for r in conn.execute(select(touches))}
    assert len(rows) == 40
    by_status = {}
    for r in rows.values():
        by_status.setdefault((r.status, r.reason), 0)
        by_status[(r.status, r.reason)] += 1
    assert by_status[("held_out", "holdout")] == (out["reason"] == "holdout").sum() > 0
    assert ("dropped", "budget") in by_status and ("dropped", "frequency_cap") in by_status
    assert sum(n for (status, _), n in by_status.items() if status == "sent") == sum(result.sent.values())
    assert all(r.variant in ("coupon", "gift") for r in rows.values() if r.status == "sent" and r.tier == 1)


ZONES = ["Asia/Shanghai", "Europe/London", "America/Los_Angeles", "Australia/Sydney", "Asia/Kolkata", "UTC"]


def _locally_quiet(zone: str, at: dt.datetime) -> bool:
    """Independent oracle: is `at` between 22:00 and 08:00 on the customer's own clock?"""
    import zoneinfo

    local = at.astimezone(zoneinfo.ZoneInfo(zone))
    return local.hour >= 22 or local.hour < 8


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    return {q: make_plan(tmp_path_factory.mktemp(q), capacity=1000, budget=10**6, holdout=0, quiet=q)
            for q in ("drop", "defer")}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recent=st.lists(st.integers(0, 4), min_size=1, max_size=40),
       zones=st.data(), hour=st.integers(0, 23), minute=st.sampled_from([0, 1, 29, 59]),
       quiet=st.sampled_from(["drop", "defer"]))
def test_caps_and_quiet_hours_are_never_violated(plans, recent, zones, hour, minute, quiet):
    """Nobody at or over the cap is touched; nobody is touched inside their own quiet hours, except
    as a deferred touch when the playbook says defer (and then it is marked deferred)."""
    plan = plans[quiet]
    frame = customers(len(recent))
    frame["timezone"] = zones.draw(st.lists(st.sampled_from(ZONES), min_size=len(recent), max_size=len(recent)))
    at = dt.datetime(2026, 3, 14, hour, minute, tzinfo=dt.UTC)
    counts = pd.Series(recent, index=frame.index)
    out = choose_tiers(frame, plan, everyone_consents(frame), recent=counts, send_at=at)
    touched = out["tier"] >= 0
    assert (counts[touched] < plan.guardrails.frequency_cap.max).all()
    assert (out.loc[counts >= plan.guardrails.frequency_cap.max, "reason"] == "frequency_cap").all()
    quiet_now = np.array([_locally_quiet(z, at) for z in frame["timezone"]])
    if quiet == "drop":
        assert not (touched & quiet_now).any()
    else:
        assert (out["deferred"] == (touched & quiet_now)).all()


def test_held_out_customers_record_the_tier_they_would_have_had(tmp_path):
    plan = make_plan(tmp_path, capacity=20, budget=100_000, holdout=30)
    frame = customers(200)  # churn scores fall with the index: capacity goes to the first ones
    granted = everyone_consents(frame) - {("C000003", "wecom", "marketing")}
    out = choose_tiers(frame, plan, granted)
    held = out[out["reason"] == "holdout"]
    treated_advisor = out[out["tier"] == 0]
    assert len(treated_advisor) == 20 and (held["tier"] == -1).all()
    cut = treated_advisor["churn_score"].min()
    would_advisor = held[held["would_tier"] == 0]
    # held-out customers above the capacity cut would have had the advisor, those below it the SMS
    assert len(would_advisor) > 0 and (would_advisor["churn_score"] >= cut).all()
    assert (held.loc[held["churn_score"] < cut, "would_tier"] == 1).all()
    if "C000003" in held.index:
        assert held.loc["C000003", "would_tier"] == 1  # no advisor consent: SMS
    assert set(held.loc[held["would_tier"] == 1, "would_variant"]) <= {"coupon", "gift"}
    assert out.loc[out["reason"] != "holdout", "would_tier"].eq(-1).all()


def test_when_the_budget_runs_out_both_arms_of_an_ab_test_stop_at_the_same_rank(tmp_path):
    plan = make_plan(tmp_path, capacity=1, budget=300, holdout=0)  # SMS: coupon (10) 70% vs gift (free) 30%
    frame = customers(400)
    out = choose_tiers(frame, plan, everyone_consents(frame))
    sms = out[out["tier"] == 1]
    coupon, gift = sms[sms["variant"] == "coupon"], sms[sms["variant"] == "gift"]
    assert coupon["cost"].sum() <= 300 - 30 and len(coupon) == 27
    # the gift arm covers the same customers by rank as the coupon arm, not everyone after them too
    assert gift["churn_score"].min() >= coupon["churn_score"].min() - 0.01
    assert 0.2 < len(gift) / len(sms) < 0.45
    assert (out.loc[out["tier"] == 2, "churn_score"] < coupon["churn_score"].min()).all()
