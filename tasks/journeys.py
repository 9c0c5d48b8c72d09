"""Journeys: customers walk a playbook's follow-up steps, run by run, with their state in the warehouse.

- **Entry** (`enter`): after the main step, every customer the run assigned (treated: planned, sent
  or deferred; control: held out) gets a `journeys` row for (playbook, customer, entry day), with the
  plan they entered on (kept in `plans` by hash) and their first follow-up's due day. The control
  arm is recorded too, so re-entry rules treat both arms alike (honest measurement) but it gets no
  follow-ups.
- **Re-entry** (`kept_out`): `reentry.mode` once / after `days` / every_time decides who may enter again.
- **Exit on the goal** (`exit_on_goal`): a journey whose customer reached the goal event since entry
  (an order for `order.placed`) is `converted` and gets no more steps.
- **Advance** (`due`, `advance`): each run takes the active journeys whose next step is due, on the
  plan each entered on (so a new playbook version lets earlier entrants finish on theirs), and the
  flow dispatches the step to those its rule still selects. A follow-up's touch key uses the entry
  day as its window, so reruns and late runs never give a customer two keys for one step.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.engine import Engine

from flows.plan import FollowUpPlan, Plan, SegmentPlan
from infra.warehouse.bulk import among, chunks, fetch_frame, insert_ignore, utcnow
from infra.warehouse.schema import events, journeys, orders, plans, touches

ENTERED = ("planned", "sent", "deferred", "held_out")


def remember_plan(engine: Engine, plan: Plan) -> None:
    """Keep this plan by hash, so journeys entered on it can finish on it."""
    row = pd.DataFrame([{"plan_hash": plan.plan_hash, "playbook": plan.name, "version": plan.version,
                         "plan": plan.to_json(), "created_at": utcnow()}])
    with engine.begin() as conn:
        insert_ignore(conn, plans, row, ["plan_hash"])


def load_plan(engine: Engine, plan_hash: str) -> Plan | None:
    with engine.connect() as conn:
        text = conn.execute(select(plans.c.plan).where(plans.c.plan_hash == plan_hash)).scalar_one_or_none()
    return Plan.from_json(text) if text else None


def kept_out(engine: Engine, ids: pd.Index, plan: Plan, as_of: dt.date) -> np.ndarray:
    """Which of `ids` the re-entry rule keeps out today (a mask)."""
    mode = plan.reentry.mode
    if mode == "every_time" or not len(ids):
        return np.zeros(len(ids), dtype=bool)
    j = journeys.c
    found = []
    with engine.connect() as conn:
        if mode == "once":  # anyone who ever entered: looked up for these customers only
            for part in chunks(ids.to_numpy(dtype=object)):
                found.append(fetch_frame(conn, select(j.customer_id).distinct().where(
                    j.playbook == plan.name, among(j.customer_id, part), j.entered_on < as_of), ["customer_id"]))
        else:  # those who entered in the last `days`: one range read (ix_journeys_entered)
            cutoff = as_of - dt.timedelta(days=plan.reentry.days or 0)
            found.append(fetch_frame(conn, select(j.customer_id).distinct().where(
                j.playbook == plan.name, j.entered_on > cutoff, j.entered_on < as_of), ["customer_id"]))
    entered = pd.concat(found, ignore_index=True)["customer_id"] if found else pd.Series(dtype=object)
    return ids.isin(entered.to_numpy(dtype=object))


def enter(engine: Engine, plan: Plan, as_of: dt.date) -> int:
    """Open a journey for everyone this run assigned in its main step; returns how many entered."""
    remember_plan(engine, plan)
    t = touches.c
    with engine.connect() as conn:
        rows = conn.execute(select(t.customer_id, t.segment, t.status).where(
            t.playbook == plan.name, t.plan_hash == plan.plan_hash, t.as_of == as_of, t.step == "main",
            t.status.in_(ENTERED))).all()
    frame = pd.DataFrame(rows, columns=["customer_id", "segment", "status"])
    held = (frame["status"] == "held_out").to_numpy()
    first = _next_step(plan, -1)
    due = as_of + dt.timedelta(days=plan.follow_ups[first].after_days) if first is not None else None
    records = frame[["customer_id", "segment"]].assign(
        playbook=plan.name, entered_on=as_of, plan_hash=plan.plan_hash, playbook_version=plan.version,
        arm=np.where(held, "holdout", "treated"),
        state=np.where(held, "held_out", "active" if first is not None else "done"),
        next_step=pd.array([None if h or first is None else first for h in held], dtype="Int64"),
        next_due=[None if h else due for h in held],
        updated_at=utcnow())
    if len(records):
        with engine.begin() as conn:
            insert_ignore(conn, journeys, records, ["playbook", "customer_id", "entered_on"])
    return len(records)


def _next_step(plan: Plan, current: int) -> int | None:
    return current + 1 if current + 1 < len(plan.follow_ups) else None


def exit_on_goal(engine: Engine, plan: Plan, as_of: dt.date) -> int:
    """Active journeys whose customer reached the goal since entry become `converted`."""
    if plan.goal is None:
        return 0
    j = journeys.c
    until = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time())
    if plan.goal.event == "order.placed":
        reached = exists().where(orders.c.customer_id == j.customer_id,
                                 orders.c.ordered_at >= j.entered_on,
                                 orders.c.ordered_at < until)
    else:
        reached = exists().where(events.c.customer_id == j.customer_id, events.c.type == plan.goal.event,
                                 events.c.occurred_at >= j.entered_on,
                                 events.c.occurred_at < until)
    with engine.begin() as conn:
        done = conn.execute(update(journeys).where(j.playbook == plan.name, j.state == "active", reached)
                            .values(state="converted", updated_at=utcnow()))
    return int(done.rowcount or 0)


def due(engine: Engine, playbook: str, as_of: dt.date) -> pd.DataFrame:
    """Active journeys of this playbook whose next step is due by `as_of`."""
    j = journeys.c
    with engine.connect() as conn:
        rows = conn.execute(select(j.customer_id, j.entered_on, j.plan_hash, j.segment, j.next_step).where(
            j.playbook == playbook, j.state == "active", j.next_due <= as_of)).all()
    return pd.DataFrame(rows, columns=["customer_id", "entered_on", "plan_hash", "segment", "next_step"])


def due_customers(engine: Engine, playbook: str, as_of: dt.date) -> pd.Index:
    """The customers with a follow-up of this playbook due by `as_of` (their rule may read today's score)."""
    return pd.Index(due(engine, playbook, as_of)["customer_id"].unique(), dtype=object)


def step_plan(plan: Plan, step: FollowUpPlan) -> Plan:
    """A follow-up as a plan of its own: one segment per followed segment, with the step's tiers.

    No holdout here: the control group was drawn at entry and never reaches a follow-up.
    """
    segments = tuple(SegmentPlan(name=s, rule=None, rule_text=None, tiers=step.tiers) for s in step.segments)
    return plan.model_copy(update={"segments": segments, "experiment": None, "follow_ups": ()})


def since_entry(engine: Engine, group: pd.DataFrame, as_of: dt.date) -> pd.DataFrame:
    """The follow-up-only features for journeys entered on one day: orders since then, days since."""
    entered = group["entered_on"].iloc[0]
    start = dt.datetime.combine(entered, dt.time())
    until = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time())
    ids = list(group["customer_id"])
    counts: dict[str, int] = {}
    o = orders.c
    with engine.connect() as conn:
        for part in chunks(ids):
            counts.update(conn.execute(select(o.customer_id, func.count()).where(
                among(o.customer_id, part), o.ordered_at >= start, o.ordered_at < until).group_by(o.customer_id)).all())
    return pd.DataFrame({"orders_since_touch": [counts.get(c, 0) for c in ids],
                         "days_since_touch": (as_of - entered).days}, index=pd.Index(ids, name="customer_id"))


def main_touch_sent(engine: Engine, playbook: str, entered_on: dt.date, ids: list[str]) -> dict[str, str]:
    """The status of each customer's main touch on their entry day."""
    t = touches.c
    found: dict[str, str] = {}
    with engine.connect() as conn:
        for part in chunks(ids):
            found.update(conn.execute(select(t.customer_id, t.status).where(
                t.playbook == playbook, t.as_of == entered_on, t.step == "main", among(t.customer_id, part))).all())
    return found


def advance(engine: Engine, playbook: str, entered_on: dt.date, plan: Plan, step: int, ids: list[str]) -> None:
    """Move these journeys past `step`: to the next follow-up's due day, or done."""
    nxt = _next_step(plan, step)
    j = journeys.c
    values = ({"next_step": nxt, "next_due": entered_on + dt.timedelta(days=plan.follow_ups[nxt].after_days)}
              if nxt is not None else {"state": "done", "next_step": None, "next_due": None})
    with engine.begin() as conn:
        for part in chunks(ids):
            conn.execute(update(journeys).where(and_(
                j.playbook == playbook, j.entered_on == entered_on, among(j.customer_id, part),
                j.state == "active", j.next_step == step)).values(**values, updated_at=utcnow()))


def close(engine: Engine, playbook: str, entered_on: dt.date, ids: list[str], state: str) -> None:
    j = journeys.c
    with engine.begin() as conn:
        for part in chunks(ids):
            conn.execute(update(journeys).where(
                j.playbook == playbook, j.entered_on == entered_on, among(j.customer_id, part), j.state == "active")
                .values(state=state, next_step=None, next_due=None, updated_at=utcnow()))
