"""The demo world answers back: latent response types with known effects, and the measured lift finds them."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select, update

from flows.compiler import compile_file
from infra import demoresponse as dr
from infra.settings import SHIPPED_PLAYBOOKS, load_config
from infra.warehouse.bulk import bulk_insert
from infra.warehouse.schema import customers, orders, touches
from tasks import guardrails, measure
from tests.conftest import END, make_world

PLAN = compile_file(SHIPPED_PLAYBOOKS / "churn_winback.yaml", load_config())


# ---- at the ledger level: fast, many seeds ------------------------------------------------------

def ledger_world(seed: int, *, n: int = 4000, effects: dr.Effects = dr.DEMO_EFFECTS, holdout: float = 0.2):
    """A playbook's assignments plus baseline orders around its touch, without a warehouse.

    Guardrails drop the most active customers more often (a frequency cap would), so comparing only
    the reached ones with the control would be biased; intent to treat is not.
    """
    rng = np.random.default_rng(seed)
    ids = np.array([f"C{i:07d}" for i in range(n)], dtype=object)
    as_of = dt.date(2026, 6, 1)
    anchor = measure.touch_instant(PLAN, as_of)
    rate = rng.gamma(1.5, (1 / 40) / 1.5, n)  # orders per day, as heterogeneous as the demo world's
    control = rng.random(n) < holdout
    seg = rng.choice(["high_value", "mid_value", "low_value"], n, p=[0.2, 0.4, 0.4])
    tier = np.where(seg == "low_value", 0, rng.integers(0, 2, n))
    channel = np.select([(seg == "high_value") & (tier == 0), seg == "low_value", tier == 1],
                        ["advisor", "push", "push"], "sms")
    channel = np.where((seg == "high_value") & (tier == 1), "sms", channel)
    variant = np.where((seg == "mid_value") & (tier == 0), rng.choice(["coupon", "gift"], n), None)
    dropped = rng.random(n) < np.clip(rate * 8, 0.02, 0.6)
    status = np.where(control, "held_out", np.where(dropped, "dropped", "sent"))
    treated = ~control
    touched = pd.DataFrame({
        "playbook": PLAN.name, "customer_id": ids, "as_of": as_of, "arm": np.where(control, "control", "treated"),
        "status": status, "segment": seg, "tier": np.where(treated, tier, None),
        "channel": np.where(treated, channel, None), "variant": np.where(treated, variant, None),
        "anchor": anchor, "window_days": PLAN.goal.window_days})
    touched["has_offer"] = touched["channel"].isin(["advisor", "sms"]) & (touched["variant"] != "gift")
    k = rng.poisson(rate * 60)
    owner = np.repeat(np.arange(n), k)
    baseline = pd.DataFrame({
        "order_id": [f"O{i}" for i in range(owner.size)], "customer_id": ids[owner],
        "ordered_at": pd.Timestamp(anchor) - pd.Timedelta(days=20) + pd.to_timedelta(rng.random(owner.size) * 60, unit="D"),
        "amount": np.round(rng.lognormal(5, 0.5, owner.size), 2)})
    response = dr.simulate(touched, baseline, pd.Series(200.0, index=ids), seed=seed, effects=effects)
    final = pd.concat([baseline[~baseline["order_id"].isin(response.removed)], response.added[baseline.columns]])
    spend = final.rename(columns={"ordered_at": "at", "amount": "value"})[["customer_id", "at", "value"]]
    ledger = touched.assign(reason=np.where(control, "holdout", np.where(dropped, "frequency_cap", None)), cost=np.nan)
    frame = measure.outcomes(measure.assign(ledger.drop(columns=["arm", "anchor"]), PLAN), spend, spend,
                             PLAN.goal.window_days, None)
    sent = frame.loc[frame["status"] == "sent", "channel"].value_counts().to_dict()
    m = measure.measure(frame, PLAN, fees={}, sent=sent, date_from=as_of, date_to=as_of, n_boot=400, seed=seed)
    return m, response, frame


def test_measured_lift_recovers_the_simulated_true_effect_within_its_interval():
    covered, measured, true = 0, [], []
    for seed in range(10):
        m, response, _ = ledger_world(seed)
        truth = response.true_lift(PLAN.name).loc["all"]
        lift = m.overall.lift
        covered += lift.rate_low <= truth["rate_diff"] <= lift.rate_high
        measured.append(lift.rate_diff)
        true.append(truth["rate_diff"])
        assert truth["rate_diff"] > 0.02  # the demo's effects are real
    assert covered >= 8
    # unbiased on average despite guardrails dropping the most active customers
    assert np.mean(measured) == pytest.approx(np.mean(true), abs=0.01)


def test_comparing_only_the_reached_customers_with_the_control_would_be_biased():
    """Why the treated arm is intent to treat: the reached customers are the less active ones."""
    gaps = []
    for seed in range(3):
        m, response, frame = ledger_world(seed, effects=dr.NO_EFFECT)
        reached = frame[frame["status"] == "sent"]["converted"].mean()
        control = frame[frame["arm"] == "control"]["converted"].mean()
        gaps.append(reached - control)
        assert m.overall.lift.rate_low <= 0 <= m.overall.lift.rate_high
    assert np.mean(gaps) < -0.02


def test_a_playbook_with_no_true_effect_reports_an_interval_containing_zero_in_most_seeds():
    contains = 0
    for seed in range(10):
        m, response, _ = ledger_world(100 + seed, effects=dr.NO_EFFECT)
        assert response.added.empty and not response.removed
        assert (response.true_lift(PLAN.name)["rate_diff"] == 0).all()
        contains += m.overall.lift.rate_low <= 0 <= m.overall.lift.rate_high
    assert contains >= 8


def test_types_follow_their_definitions_and_effects_follow_channel_and_offer():
    _, response, _ = ledger_world(1, n=20_000)
    t = response.truth
    assert set(t["type"]) == set(dr.TYPES)
    untouched = t[t["status"] != "sent"]
    assert (untouched["converted_with"] == untouched["converted_without"]).all()
    assert set(untouched["type"]) <= {"sure_thing", "lost_cause"}
    for kind, before, after in (("persuadable", False, True), ("do_not_disturb", True, False),
                                ("sure_thing", True, True), ("lost_cause", False, False)):
        rows = t[t["type"] == kind]
        assert len(rows) and (rows["converted_without"] == before).all() and (rows["converted_with"] == after).all()
    reached = t[t["status"] == "sent"]
    share = reached.assign(p=reached["type"] == "persuadable").groupby("channel")["p"].mean()
    assert share["advisor"] > share["sms"] > share["push"]  # as DEMO_EFFECTS says
    mid = reached[(reached["segment"] == "mid_value") & (reached["channel"] == "sms")]
    by_offer = mid.assign(p=mid["type"] == "persuadable").groupby("variant")["p"].mean()
    assert by_offer["coupon"] > by_offer["gift"]
    # a persuaded order falls inside its customer's window, after the touch
    added = response.added.merge(t[["customer_id", "as_of"]], on="customer_id")
    anchor = pd.Timestamp(measure.touch_instant(PLAN, dt.date(2026, 6, 1)))
    assert ((added["ordered_at"] >= anchor) & (added["ordered_at"] < anchor + pd.Timedelta(days=14))).all()
    # deterministic in the seed
    again = ledger_world(1, n=20_000)[1]
    assert again.added.equals(response.added) and again.removed == response.removed
    assert not ledger_world(2, n=20_000)[1].added["customer_id"].equals(response.added["customer_id"])


# ---- in a warehouse: the ledger the flow writes, responses written once ---------------------------

def warehouse_world(url: str, *, customers_n: int = 3000, seed: int = 3, effects: dr.Effects = dr.DEMO_EFFECTS):
    """A generated world, a churn_winback ledger a month before its end (hand-written: no Prefect run
    needed), and the simulated responses. Returns (engine, as_of, response)."""
    engine = make_world(url, customers=customers_n, seed=seed, end=END)
    as_of = END - dt.timedelta(days=30)
    with engine.connect() as conn:
        last = pd.DataFrame(conn.execute(select(orders.c.customer_id, func.max(orders.c.ordered_at)).where(
            orders.c.ordered_at < dt.datetime.combine(as_of, dt.time())).group_by(orders.c.customer_id)).all(),
            columns=["customer_id", "last"])
    days = (pd.Timestamp(as_of) - pd.to_datetime(last["last"])).dt.days
    picked = last[(days >= 14) & (days <= 365)].sort_values("customer_id")
    ids = picked["customer_id"].to_numpy()
    rng = np.random.default_rng(seed)
    seg = rng.choice(["high_value", "mid_value", "low_value"], ids.size, p=[0.2, 0.4, 0.4])
    held = guardrails.held_out(list(ids), PLAN)
    sent = ~held & (rng.random(ids.size) < 0.85)
    tier = np.where(seg == "high_value", 1, 0)  # advisor capacity is long gone: high value gets the SMS tier
    channel = np.where(seg == "low_value", "push", "sms")
    variant = np.where(seg == "mid_value", guardrails.pick_variants(
        list(ids), PLAN, "mid_value/0", PLAN.tier("mid_value", 0).variants), None)
    now = dt.datetime(2026, 6, 1)
    ledger = pd.DataFrame({
        "touch_key": [f"k{i}" for i in range(ids.size)], "run_id": "test", "playbook": PLAN.name,
        "playbook_version": PLAN.version, "plan_hash": PLAN.plan_hash, "step": "main", "as_of": as_of,
        "customer_id": ids, "segment": seg, "tier": np.where(held, None, tier),
        "channel": np.where(held, None, channel), "variant": np.where(held, None, variant),
        "status": np.where(held, "held_out", np.where(sent, "sent", "dropped")),
        "reason": np.where(held, "holdout", np.where(sent, None, "no_consent")),
        "created_at": now, "updated_at": now, "priority": 80})
    with engine.begin() as conn:
        bulk_insert(conn, touches, ledger)
    touched = measure.assignments(engine, PLAN, as_of, as_of)
    until = dt.datetime.combine(END, dt.time())
    return engine, as_of, dr.respond(engine, touched, seed=seed, effects=effects, until=until)


def _order_ids(engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(orders.c.order_id)).scalars())


def test_responses_are_written_once_and_the_report_finds_the_true_effect(any_url):
    engine, as_of, response = warehouse_world(any_url)
    assert response.applied and len(response.added) > 0
    ids = _order_ids(engine)
    assert set(response.added["order_id"]) <= ids and not set(response.removed) & ids
    assert all(i.startswith(dr.ORDER_PREFIX) for i in response.added["order_id"])

    m = measure.measure_playbook(engine, PLAN, as_of, as_of, fees={"sms": 0.05})
    truth = response.true_lift(PLAN.name).loc["all"]
    assert m.overall.lift.rate_low <= truth["rate_diff"] <= m.overall.lift.rate_high
    assert m.overall.treated.n == int((response.truth["arm"] == "treated").sum())

    touched = measure.assignments(engine, PLAN, as_of, as_of)
    again = dr.respond(engine, touched, seed=3, until=dt.datetime.combine(END, dt.time()))
    assert not again.applied and _order_ids(engine) == ids


def test_responses_never_touch_a_warehouse_that_is_not_a_demo_world(sqlite_url):
    engine = make_world(sqlite_url, customers=200, seed=1, end=END)
    assert dr.is_demo_world(engine)
    with engine.begin() as conn:
        first = conn.execute(select(customers.c.customer_id).where(customers.c.email.is_not(None))).scalars().first()
        conn.execute(update(customers).where(customers.c.customer_id == first).values(email="someone@real.example.org"))
    assert not dr.is_demo_world(engine)
