"""`lifecycle explain`: the trace of a real run's decisions agrees with the ledger, reads one customer only, and
never shows an email or phone."""

from __future__ import annotations

import datetime as dt
import json
import os
import re

import pandas as pd
import pytest
from sqlalchemy import event, select

from flows.explain import explain, format_text
from infra.errors import UsageError
from infra.settings import SHIPPED_PLAYBOOKS, load_config
from infra.warehouse.schema import customers, orders, touches
from tests.conftest import END, make_world
from tests.flows.test_cli import assert_clean_failure, cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ran(prefect_harness, tmp_path_factory):
    """A world, a model and one churn_winback run: ledger rows of every kind to explain."""
    from flows.build import run_plan
    from flows.compiler import compile_file
    from flows.training import train
    from tasks import common

    url = f"sqlite:///{tmp_path_factory.mktemp('explain') / 'warehouse.db'}"
    engine = make_world(url, customers=2000, seed=8)
    model = train(engine, END, 90)
    saved = os.environ.get("LIFECYCLE_DB_URL")
    os.environ["LIFECYCLE_DB_URL"] = url
    try:
        path = SHIPPED_PLAYBOOKS / "churn_winback.yaml"
        run_plan(compile_file(path, load_config()), str(path), END, dry_run=False, model_version=model.version)
    finally:
        common._engine.cache_clear()
        os.environ.pop("LIFECYCLE_DB_URL") if saved is None else os.environ.__setitem__("LIFECYCLE_DB_URL", saved)
    with engine.connect() as conn:
        ledger = pd.DataFrame([dict(r) for r in conn.execute(select(touches)).mappings()])
    return url, engine, ledger


def _one(ledger: pd.DataFrame, mask) -> dict:
    rows = ledger[mask]
    assert len(rows), "the demo world always has such a customer"
    return rows.sort_values("customer_id").iloc[0].to_dict()


def _trace(engine, customer_id: str, **kw) -> dict:
    report = explain(engine, load_config(), customer_id, **kw)
    assert [d["playbook"] for d in report["decisions"]] == ["churn_winback"]
    return report["decisions"][0]


def test_a_deferred_touch_says_when_it_is_due_on_the_customers_clock(ran):
    url, engine, ledger = ran
    row = _one(ledger, ledger["status"] == "deferred")
    d = _trace(engine, row["customer_id"])
    zone = d["features"]["timezone"]
    assert "." not in d["ledger"]["due_at"] and "." not in d["ledger"]["created_at"]
    assert d["ledger"]["why"] == f"deferred by quiet hours; due {d['ledger']['due_local']}"
    assert (f" {zone} (" in d["ledger"]["due_local"]) if zone not in ("UTC", "Etc/UTC") else \
        d["ledger"]["due_local"].endswith(" UTC")
    text = format_text(explain(engine, load_config(), row["customer_id"]))
    assert f"    why: deferred by quiet hours; due {d['ledger']['due_local']}" in text


def test_trace_agrees_with_the_run(ran):
    url, engine, ledger = ran
    row = _one(ledger, (ledger["status"] == "sent") & ledger["skipped"].notna())
    d = _trace(engine, row["customer_id"])
    # features recomputed for this customer alone give the score the batch run recorded
    assert d["score"]["churn_score"] == pytest.approx(row["score"], abs=1e-4)
    assert d["score"]["model_version"] == row["model_version"] and d["score"]["reasons"]
    assert d["matched_segment"] == row["segment"] and d["audience"]["matched"] is True
    assert d["ledger"]["status"] == "sent" and d["ledger"]["tier"] == row["tier"] + 1
    outcomes = {t["tier"]: t for t in d["tiers"]}
    assert outcomes[row["tier"] + 1]["outcome"] == "chosen"
    for part in row["skipped"].split():
        index, why = part.split(":")
        assert outcomes[int(index) + 1]["outcome"] == "skipped" and outcomes[int(index) + 1]["why"] == why
    assert d["assignment"]["holdout"]["held_out"] is False
    # conversions: the customer's orders in the 14-day goal window after the touch instant
    start = dt.datetime.fromisoformat(d["conversions"]["touch_at"])
    with engine.connect() as conn:
        got = conn.execute(select(orders.c.amount).where(
            orders.c.customer_id == row["customer_id"], orders.c.ordered_at >= start,
            orders.c.ordered_at < start + dt.timedelta(days=14))).scalars().all()
    assert d["conversions"]["orders"] == len(got) and d["conversions"]["revenue"] == pytest.approx(sum(got))


def test_score_of_a_customer_without_recent_interactions(ran):
    """No events in their window: the features still carry the engagement columns (as zeros), as in the run."""
    from infra.warehouse.schema import events

    url, engine, ledger = ran
    since = dt.datetime.combine(END, dt.time()) - dt.timedelta(days=179)
    with engine.connect() as conn:
        active = set(conn.execute(select(events.c.customer_id).where(events.c.occurred_at >= since).distinct()).scalars())
    row = _one(ledger, ledger["score"].notna() & ~ledger["customer_id"].isin(active))
    d = _trace(engine, row["customer_id"])
    assert d["features"]["engagement_30d"] == 0 and d["features"]["last_event_days"] is None
    assert d["score"]["churn_score"] == pytest.approx(row["score"], abs=1e-4)


def test_holdout_and_variant_are_the_ledgers(ran):
    url, engine, ledger = ran
    held = _one(ledger, ledger["status"] == "held_out")
    d = _trace(engine, held["customer_id"])
    h = d["assignment"]["holdout"]
    assert h["held_out"] is True and h["bucket"] < h["percent"] == 10
    # the ledger keeps the tier a held-out customer would have had; the trace says it was not sent
    assert all(t["outcome"] == "not reached" or t["outcome"].startswith("would have been chosen")
               for t in d["tiers"]), d["tiers"]
    assert held["tier"] is None or pd.isna(held["tier"]) or \
        d["tiers"][int(held["tier"])]["outcome"].startswith("would have been chosen")
    assert "holdout" in format_text({"customer_id": held["customer_id"], "as_of": None, "decisions": [d]})
    arm = _one(ledger, ledger["variant"].notna())
    v = _trace(engine, arm["customer_id"])["assignment"]["variant"]
    assert v["variant"] == v["by_hash"] == arm["variant"]


def test_no_email_or_phone_and_one_customer_read(ran):
    url, engine, ledger = ran
    with engine.connect() as conn:
        c = conn.execute(select(customers.c.customer_id, customers.c.email, customers.c.phone, customers.c.first_name)
                         .where(customers.c.email.is_not(None), customers.c.phone.is_not(None),
                                customers.c.customer_id.in_(ledger["customer_id"].tolist()))).first()
    statements = []
    listener = lambda conn, cursor, statement, *a: statements.append(" ".join(statement.split()))  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        report = explain(engine, load_config(), c.customer_id)
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    text = format_text(report) + json.dumps(report, default=str)
    assert c.customer_id in text
    for secret in (c.email, c.phone, c.first_name):
        assert secret not in text
    # every read of the data tables is by this customer's id, apart from two whole-table probes
    # answered from an index: the newest order (is the goal window over?) and whether events exist
    data = [s for s in statements if re.search(r"FROM (orders|events|customers|touches|consents)\b", s)]
    by_id = re.compile(r"customer_id (= \?|IN \(\?|IN \(SELECT value FROM json_each\(\?\)\))")  # one id, or a list
    unbounded = [s for s in data if not by_id.search(s)
                 and not s.startswith(("SELECT max(orders.ordered_at)", "SELECT EXISTS (SELECT * FROM events)"))]
    assert data and not unbounded, unbounded


def test_unknown_customer_gets_a_near_match(ran):
    url, engine, ledger = ran
    real = sorted(ledger["customer_id"])[0]
    with pytest.raises(UsageError) as err:
        explain(engine, load_config(), real.lower() + "x")
    assert err.value.code == "L340" and f"did you mean '{real}'?" in err.value.hint
    assert_clean_failure(cli("explain", real[:-1] + "Z", "--db", url), 2, "error[L340]", "did you mean")


def test_a_day_without_a_decision_says_what_the_rules_say(ran):
    url, engine, ledger = ran
    who = _one(ledger, ledger["status"] == "sent")["customer_id"]
    earlier = END - dt.timedelta(days=30)
    quiet = explain(engine, load_config(), who, as_of=earlier)
    assert quiet["decisions"] == [] and "no playbook decided" in quiet["note"] and quiet["features"]
    d = explain(engine, load_config(), who, playbook="churn_winback", as_of=earlier)["decisions"][0]
    assert d["ledger"] is None and "no ledger row" in d["notes"][0]
    assert d["audience"]["matched"] in (True, False)
    r = cli("explain", who, "--db", url, "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["decisions"][0]["ledger"]["status"] == "sent"
