"""Follow-up steps: each run sends the due steps of the journeys its playbook opened (tasks/journeys.py).

For every group of due journeys (same plan, step and entry day): journeys whose main touch was never
delivered leave (`exited`); those still waiting for it (deferred) wait; the rest get the step if its
rule still selects them (it may use `orders_since_touch` and `days_since_touch`), allocated and
dispatched with the same guardrails as the main step, keyed by the entry day. Then the journeys move
to their next step, or are done. A journey whose customer reached the goal never gets here.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.engine import Engine

from flows.expr import evaluate
from flows.plan import Plan
from infra.settings import ProjectConfig
from tasks import journeys
from tasks.allocate import allocate_frame
from tasks.dispatch import dispatch_frame
from tasks.common import IO_RETRIES

log = logging.getLogger("lifecycle.journeys")
WAITING = ("planned", "deferred")  # the main touch is still on its way


def run_follow_ups(scored: pd.DataFrame, plan: Plan, as_of: dt.date, *, engine: Engine, config: ProjectConfig,
                   run_id: str | None, model_version: str | None, dry_run: bool) -> dict[str, Any]:
    """Send the follow-up steps due today; counts per step for the summary (nothing is written in a dry run)."""
    summary: dict[str, Any] = {"converted": 0, "steps": {}}
    if not dry_run:
        summary["converted"] = journeys.exit_on_goal(engine, plan, as_of)
    due = journeys.due(engine, plan.name, as_of)
    for (plan_hash, step_index, entered_on), group in due.groupby(["plan_hash", "next_step", "entered_on"]):
        entered_plan = plan if plan_hash == plan.plan_hash else journeys.load_plan(engine, plan_hash)
        ids = list(group["customer_id"])
        if entered_plan is None or int(step_index) >= len(entered_plan.follow_ups):
            if not dry_run:
                journeys.close(engine, plan.name, entered_on, ids, "exited")
            continue
        step = entered_plan.follow_ups[int(step_index)]
        counts = summary["steps"].setdefault(step.name, {"due": 0, "selected": 0, "sent": {}, "dropped": {},
                                                         "deferred": 0, "exited": 0})
        counts["due"] += len(ids)
        main = journeys.main_touch_sent(engine, plan.name, entered_on, ids)
        waiting = [c for c in ids if main.get(c) in WAITING]
        gone = [c for c in ids if main.get(c) not in (*WAITING, "sent")]
        counts["exited"] += len(gone)
        ready = group[group["customer_id"].isin([c for c in ids if main.get(c) == "sent"])]
        ready = ready[ready["segment"].isin(step.segments)]
        selected = _select(scored, ready, step, engine, as_of)
        counts["selected"] += len(selected)
        if len(selected):
            step_plan = journeys.step_plan(entered_plan, step)
            allocated = allocate_frame(selected, step_plan, as_of, engine)
            result = dispatch_frame(allocated, step_plan, as_of, engine=engine, config=config, run_id=run_id,
                                    model_version=model_version, dry_run=dry_run, step=step.name, window=entered_on,
                                    plan_hash=entered_plan.plan_hash)
            for ch, n in result.sent.items():
                counts["sent"][ch] = counts["sent"].get(ch, 0) + n
            for why, n in result.dropped.items():
                counts["dropped"][why] = counts["dropped"].get(why, 0) + n
            counts["deferred"] += result.deferred
        if not dry_run:
            journeys.close(engine, plan.name, entered_on, gone, "exited")
            moving = [c for c in ids if c not in set(waiting) | set(gone)]
            journeys.advance(engine, plan.name, entered_on, entered_plan, int(step_index), moving)
    log.info("follow-ups %s: %s", plan.name, {k: (v["due"], v["selected"], v["sent"]) for k, v in summary["steps"].items()})
    return summary


def _select(scored: pd.DataFrame, ready: pd.DataFrame, step, engine: Engine, as_of: dt.date) -> pd.DataFrame:
    """The ready customers the step's rule selects, with today's features, the journey's segment and
    the follow-up features."""
    if ready.empty:
        return scored.iloc[0:0].assign(segment=pd.Series(dtype=object))
    frames = []
    for entered_on, part in ready.groupby("entered_on"):
        extra = journeys.since_entry(engine, part, as_of)
        have = extra.index.intersection(scored.index)
        frame = scored.loc[have].join(extra.loc[have])
        frame["segment"] = part.set_index("customer_id").loc[have, "segment"]
        if step.rule is not None:
            frame = frame[evaluate(step.rule, frame, as_of=as_of).to_numpy(dtype=bool)]
        frames.append(frame)
    return pd.concat(frames) if frames else scored.iloc[0:0]


@task(name="enter journeys", cache_policy=NO_CACHE, **IO_RETRIES)
def enter_journeys(engine: Engine, plan: Plan, as_of: dt.date) -> int:
    return journeys.enter(engine, plan, as_of)


@task(name="follow-ups", cache_policy=NO_CACHE, **IO_RETRIES)
def follow_ups(scored: pd.DataFrame, plan: Plan, as_of: dt.date, *, engine: Engine, config: ProjectConfig,
               run_id: str | None, model_version: str | None, dry_run: bool) -> dict[str, Any]:
    return run_follow_ups(scored, plan, as_of, engine=engine, config=config, run_id=run_id,
                          model_version=model_version, dry_run=dry_run)
