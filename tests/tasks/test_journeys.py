"""Multi-step journeys: follow-ups go out when due, once, to those their rule still selects; the goal
ends a journey; re-entry rules hold; customers finish on the version they entered."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
from sqlalchemy import select

from flows.compiler import compile_file
from infra.settings import load_config, outbox_dir
from infra.warehouse.db import open_warehouse, upgrade
from infra.warehouse.schema import consents, journeys, orders, touches
from tasks import journeys as jr
from tasks.allocate import allocate_frame
from tasks.dispatch import dispatch_frame
from tasks.followups import run_follow_ups

D0 = dt.date(2026, 6, 1)
IDS = ["C1", "C2", "C3", "C4"]
PLAYBOOK = """
name: journey
model: none
version: VERSION
segments:
  - name: everyone
    else: true
    tiers:
      - {channel: push, template: hello.j2}
follow_up:
  - name: reminder
    after_days: 3
    when: "orders_since_touch == 0"
    tiers:
      - {channel: push, template: REMINDER}
  - name: last_call
    after_days: 7
    tiers:
      - {channel: push, template: last.j2}
reentry: REENTRY
goal: {event: order.placed, window_days: 14}
"""


def make_plan(folder, version=1, reminder="reminder.j2", reentry="{mode: once}"):
    (folder / "templates").mkdir(parents=True, exist_ok=True)
    for name, text in {"hello.j2": "Hello", "reminder.j2": "Reminder v1", "reminder2.j2": "Reminder v2",
                       "last.j2": "Last call"}.items():
        (folder / "templates" / name).write_text(text)
    (folder / "journey.yaml").write_text(PLAYBOOK.replace("VERSION", str(version)).replace("REMINDER", reminder)
                                         .replace("REENTRY", reentry))
    return compile_file(folder / "journey.yaml", load_config())


@pytest.fixture
def engine(any_url):
    engine = open_warehouse(any_url, create=True)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(consents.insert(), [{"customer_id": c, "channel": "push", "purpose": "marketing",
                                          "granted_at": dt.datetime(2025, 1, 1)} for c in IDS])
    return engine


def scored(ids=IDS) -> pd.DataFrame:
    return pd.DataFrame({"timezone": "UTC", "first_name": None, "churn_score": None},
                        index=pd.Index(ids, name="customer_id"))


def admit(engine, plan, day, ids=IDS) -> tuple[pd.DataFrame, int]:
    """The customers the re-entry rule lets in on `day`, and how many it keeps out."""
    selected = scored(ids).assign(segment="everyone")
    out = jr.kept_out(engine, selected.index, plan, day)
    return selected[~out], int(out.sum())


def main_step(engine, plan, day, ids=IDS):
    selected, _ = admit(engine, plan, day, ids)
    allocated = allocate_frame(selected, plan, day, engine)
    dispatch_frame(allocated, plan, day, engine=engine, config=load_config(), run_id="r", model_version=None,
                   dry_run=False)
    jr.enter(engine, plan, day)
    return selected


def follow(engine, plan, day, dry_run=False):
    return run_follow_ups(scored(), plan, day, engine=engine, config=load_config(), run_id="r",
                          model_version=None, dry_run=dry_run)


def bodies() -> list[tuple[str, str]]:
    path = outbox_dir() / "push.jsonl"
    return [(m["customer_id"], m["body"]) for m in map(json.loads, path.read_text().splitlines())]


def states(engine) -> dict[str, tuple]:
    j = journeys.c
    with engine.connect() as conn:
        return {r[0]: tuple(r[1:]) for r in conn.execute(select(j.customer_id, j.state, j.next_step, j.next_due))}


def test_follow_ups_go_when_due_once_and_the_goal_ends_the_journey(engine, tmp_path):
    plan = make_plan(tmp_path)
    main_step(engine, plan, D0)
    assert states(engine)["C1"] == ("active", 0, D0 + dt.timedelta(days=3))
    with engine.begin() as conn:  # C2 buys the next day: the goal; C3 buys too early (before entry) - no effect
        conn.execute(orders.insert(), [
            {"order_id": "o1", "customer_id": "C2", "ordered_at": dt.datetime(2026, 6, 2, 12), "amount": 50},
            {"order_id": "o2", "customer_id": "C3", "ordered_at": dt.datetime(2026, 5, 30, 12), "amount": 50}])

    early = follow(engine, plan, D0 + dt.timedelta(days=2))
    assert early["steps"] == {} and early["converted"] == 1 and len(bodies()) == 4

    day3 = follow(engine, plan, D0 + dt.timedelta(days=3))
    assert day3["steps"]["reminder"]["sent"] == {"push": 3}
    reminded = sorted(c for c, b in bodies() if b == "Reminder v1")
    assert reminded == ["C1", "C3", "C4"]
    assert states(engine)["C2"][0] == "converted"
    assert states(engine)["C1"] == ("active", 1, D0 + dt.timedelta(days=7))

    again = follow(engine, plan, D0 + dt.timedelta(days=3))  # a rerun the same day repeats nothing
    assert again["steps"] == {} and len(bodies()) == 7

    late = follow(engine, plan, D0 + dt.timedelta(days=9))  # a late run still sends the step, once
    assert late["steps"]["last_call"]["sent"] == {"push": 3}
    assert {s[0] for c, s in states(engine).items() if c != "C2"} == {"done"}
    with engine.connect() as conn:
        keys = conn.execute(select(touches.c.customer_id, touches.c.step, touches.c.touch_key)
                            .where(touches.c.status == "sent")).all()
    assert len({(c, s) for c, s, _ in keys}) == len(keys) == 10  # one key per customer and step


def test_a_step_whose_rule_no_longer_holds_is_skipped_not_retried(engine, tmp_path):
    plan = make_plan(tmp_path)
    main_step(engine, plan, D0)
    with engine.begin() as conn:  # an order that does not count as the goal would still fail the rule
        conn.execute(orders.insert().values(order_id="o1", customer_id="C4", ordered_at=dt.datetime(2026, 6, 2),
                                            amount=5))
    plan_no_goal = plan.model_copy(update={"goal": None})
    out = follow(engine, plan_no_goal, D0 + dt.timedelta(days=3))
    assert out["steps"]["reminder"]["due"] == 4 and out["steps"]["reminder"]["selected"] == 3
    assert states(engine)["C4"] == ("active", 1, D0 + dt.timedelta(days=7))  # moves on to last_call


def test_reentry_rules(engine, tmp_path):
    once = make_plan(tmp_path / "once")
    main_step(engine, once, D0, ["C1", "C2"])
    admitted, kept_out = admit(engine, once, D0 + dt.timedelta(days=40))
    assert list(admitted.index) == ["C3", "C4"] and kept_out == 2

    after = make_plan(tmp_path / "after", reentry="{mode: after, days: 30}")
    admitted, _ = admit(engine, after, D0 + dt.timedelta(days=20))
    assert list(admitted.index) == ["C3", "C4"]
    admitted, _ = admit(engine, after, D0 + dt.timedelta(days=30))
    assert list(admitted.index) == IDS

    every = make_plan(tmp_path / "every", reentry="{mode: every_time}")
    admitted, kept_out = admit(engine, every, D0 + dt.timedelta(days=1))
    assert list(admitted.index) == IDS and kept_out == 0



def test_reentry_rules_hold_for_a_day_before_the_days_already_run(engine, tmp_path):
    """A backfill (a run for a day before one already run) keeps out who entered later, as a run after
    it would: `after 30 days` within 30 days on either side, `once` on any other day; a rerun of the
    day already run decides the same customers again."""
    after = make_plan(tmp_path / "after", reentry="{mode: after, days: 30}")
    main_step(engine, after, D0, ["C1", "C2"])
    admitted, kept_out = admit(engine, after, D0 - dt.timedelta(days=7))
    assert list(admitted.index) == ["C3", "C4"] and kept_out == 2
    admitted, _ = admit(engine, after, D0 - dt.timedelta(days=29))
    assert list(admitted.index) == ["C3", "C4"]
    admitted, _ = admit(engine, after, D0 - dt.timedelta(days=30))  # 30 days apart: the rule lets them in
    assert list(admitted.index) == IDS
    admitted, _ = admit(engine, after, D0)  # the same day again: the same customers
    assert list(admitted.index) == IDS

    once = make_plan(tmp_path / "once", reentry="{mode: once}")
    admitted, kept_out = admit(engine, once, D0 - dt.timedelta(days=400))
    assert list(admitted.index) == ["C3", "C4"] and kept_out == 2

def test_customers_finish_on_the_version_they_entered(engine, tmp_path):
    v1 = make_plan(tmp_path / "v1")
    main_step(engine, v1, D0, ["C1", "C2"])
    v2 = make_plan(tmp_path / "v2", version=2, reminder="reminder2.j2", reentry="{mode: every_time}")
    main_step(engine, v2, D0 + dt.timedelta(days=1), ["C3", "C4"])
    follow(engine, v2, D0 + dt.timedelta(days=4))  # both cohorts are due by now
    got = {c: b for c, b in bodies() if b.startswith("Reminder")}
    assert got == {"C1": "Reminder v1", "C2": "Reminder v1", "C3": "Reminder v2", "C4": "Reminder v2"}


def test_holdout_customers_enter_but_get_no_follow_ups_and_dry_runs_change_nothing(engine, tmp_path):
    plan = make_plan(tmp_path)
    from flows.plan import Experiment

    held = plan.model_copy(update={"experiment": Experiment(holdout_percent=99.99, salt="all")})
    main_step(engine, held, D0)
    assert {s[0] for s in states(engine).values()} == {"held_out"}
    before = states(engine)
    out = follow(engine, held, D0 + dt.timedelta(days=3), dry_run=True)
    assert out["steps"] == {} and states(engine) == before


def test_customers_the_run_could_not_reach_enter_too_and_wait_like_the_held_out(engine, tmp_path):
    """A decision is the entry: a treated customer dropped for lack of consent is decided again when the
    re-entry rule lets a held-out customer back, not at the next run, and gets no follow-ups."""
    from flows.plan import Experiment

    plan = make_plan(tmp_path, reentry="{mode: after, days: 30}")
    plan = plan.model_copy(update={"experiment": Experiment(holdout_percent=40, salt="s")})
    everyone = [*IDS, "C5"]  # C5 never consented to push
    main_step(engine, plan, D0, everyone)
    with engine.connect() as conn:
        ledger = dict(conn.execute(select(touches.c.customer_id, touches.c.status)).all())
    got = states(engine)
    assert ledger["C5"] == "dropped" and got["C5"] == ("exited", None, None)
    held = {c for c, s in ledger.items() if s == "held_out"}
    assert held and all(got[c][0] == "held_out" for c in held)
    assert all(got[c] == ("active", 0, D0 + dt.timedelta(days=3)) for c in everyone if ledger[c] == "sent")

    for day in (1, 29):
        admitted, kept = admit(engine, plan, D0 + dt.timedelta(days=day), everyone)
        assert admitted.empty and kept == 5
    admitted, _ = admit(engine, plan, D0 + dt.timedelta(days=30), everyone)
    assert list(admitted.index) == everyone

    follow(engine, plan, D0 + dt.timedelta(days=3))
    reminded = {c for c, b in bodies() if b == "Reminder v1"}
    assert reminded == {c for c in everyone if ledger[c] == "sent"}
    with engine.connect() as conn:  # a rerun of the day enters no one twice
        before = conn.execute(select(journeys.c.customer_id)).all()
    assert jr.enter(engine, plan, D0) == 0
    with engine.connect() as conn:
        assert conn.execute(select(journeys.c.customer_id)).all() == before


def test_a_playbook_without_follow_ups_enters_everyone_with_nothing_ahead(engine, tmp_path):
    plan = make_plan(tmp_path).model_copy(update={"follow_ups": ()})
    main_step(engine, plan, D0, [*IDS, "C5"])  # C5 never consented: not reached
    got = states(engine)
    assert {c: s for c, s in got.items()} == {**{c: ("done", None, None) for c in IDS}, "C5": ("exited", None, None)}
