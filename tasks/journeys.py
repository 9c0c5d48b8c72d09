"""Journeys: customers walk a playbook's follow-up steps, run by run, with their state in the warehouse.

- **Entry** (`enter`): after the main step, every customer the run decided for gets a `journeys` row
  for (playbook, customer, entry day), with the plan they entered on (kept in `plans` by hash):
  touched (planned, sent, deferred: `active` towards their first follow-up, or `done`), held out
  (`held_out`: the control arm, no follow-ups) and not reached (dropped or failed: `exited`). A
  decision is the entry, whatever came of it, so the re-entry rule treats both arms alike: a
  treated customer the run could not reach is decided again when a held-out one would be, not the
  next day (that would give the treated arm of a date range more long-standing unreachable
  customers than the control arm, and rewrite the same drop every day). Ops who want the
  unreached tried again sooner shorten `reentry.days`.
- **Re-entry** (`kept_out`): `reentry.mode` once / after `days` / every_time decides who may enter again,
  counting entries before and after the run's day alike (a backfill respects the days already run).
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
from sqlalchemy import Date, DateTime, Integer, String, and_, case, cast, exists, func, literal, null, select, update
from sqlalchemy.engine import Engine

from flows.plan import FollowUpPlan, Plan, SegmentPlan
from infra.faults import crash_point
from infra.warehouse.bulk import among, chunks, fetch_frame, insert_ignore, insert_select_ignore, lookup, utcnow
from infra.warehouse.limits import good_orders
from infra.warehouse.schema import events, journeys, orders, plans, touches

REACHING = ("planned", "sent", "deferred")  # the main touch is out or on its way


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
    """Which of `ids` the re-entry rule keeps out on `as_of` (a mask).

    The rule holds in both directions in time, so the order runs happen in does not matter: a run for a
    day before days already run (a backfill, a replay) keeps out who entered on a later day as it keeps
    out who entered on an earlier one. `after N days`: an entry less than N days away on either side;
    `once`: an entry on any other day. Entries on `as_of` itself are not counted, so a rerun of that day
    decides the same customers again (and the ledger repeats nothing)."""
    mode = plan.reentry.mode
    if mode == "every_time" or not len(ids):
        return np.zeros(len(ids), dtype=bool)
    j = journeys.c
    if mode == "once":  # anyone who entered on another day: looked up for these customers only
        entered = lookup(engine, ids.to_numpy(dtype=object), j.customer_id, lambda within: select(j.customer_id)
                         .distinct().where(j.playbook == plan.name, within, j.entered_on != as_of), ["customer_id"])
    else:  # those who entered less than `days` before or after: one range read (ix_journeys_entered)
        days = dt.timedelta(days=plan.reentry.days or 0)
        with engine.connect() as conn:
            entered = fetch_frame(conn, select(j.customer_id).distinct().where(
                j.playbook == plan.name, j.entered_on > as_of - days, j.entered_on < as_of + days,
                j.entered_on != as_of), ["customer_id"])
    return ids.isin(entered["customer_id"].to_numpy(dtype=object))


def enter(engine: Engine, plan: Plan, as_of: dt.date) -> int:
    """Open a journey for everyone this run decided in its main step; returns how many entered.

    One INSERT ... SELECT from the day's ledger rows, in the database: at a million customers the run
    decides a few hundred thousand, and none of them need to travel to Python and back."""
    remember_plan(engine, plan)
    first = _next_step(plan, -1)
    due = as_of + dt.timedelta(days=plan.follow_ups[first].after_days) if first is not None else None
    t, j = touches.c, journeys.c
    held, reaching = t.status == "held_out", t.status.in_(REACHING)
    state = case((held, "held_out"), (reaching, "active" if first is not None else "done"), else_="exited")
    if first is not None:  # the touched wait for their first follow-up
        next_step = case((reaching, literal(first, Integer())), else_=null())
        next_due = case((reaching, literal(due, Date())), else_=null())
    else:  # typed NULLs: PostgreSQL takes an untyped one for text
        next_step, next_due = cast(null(), Integer()), cast(null(), Date())
    rows = select(
        t.customer_id, t.segment, literal(plan.name, String()), literal(as_of, Date()),
        literal(plan.plan_hash, String()), literal(str(plan.version), String()),
        case((held, "holdout"), else_="treated"), state, next_step, next_due,
        literal(utcnow(), DateTime()),
    ).where(t.playbook == plan.name, t.plan_hash == plan.plan_hash, t.as_of == as_of, t.step == "main")
    columns = [j.customer_id, j.segment, j.playbook, j.entered_on, j.plan_hash, j.playbook_version, j.arm, j.state,
               j.next_step, j.next_due, j.updated_at]
    with engine.begin() as conn:
        entered = insert_select_ignore(conn, journeys, columns, rows, ["playbook", "customer_id", "entered_on"])
        crash_point("journeys entry")
        return entered


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
                                 orders.c.ordered_at < until, *good_orders())  # a damaged row is no conversion
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
