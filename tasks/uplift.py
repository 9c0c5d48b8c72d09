"""Uplift from a playbook's randomised history: the data, training with an honest held-out check, scoring.

- `history`: one row per customer the playbook assigned, with the arms and outcomes of `tasks/measure.py`
  (treated = every selected customer not held out, control = held out; the global control group and
  goal windows not yet over are left out), their features as of the day it decided about them
  (`tasks/lookup.py`: their own rows, so a year of daily runs is one pass, not 365 warehouse
  aggregates), and the churn score that run recorded.
- `train_and_evaluate`: customers split 70/30 by a stable hash; the model learns from 70% and is judged
  on the other 30% against risk targeting (`models.uplift.evaluate`). The evaluation travels with the
  model in the registry, so a report can show it without retraining.
- `add_uplift` / `uplift_scores`: the `uplift_score` column at run time, from the newest uplift model
  registered for the playbook.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import and_, select
from sqlalchemy.engine import Engine

from flows.plan import Plan
from infra.errors import ModelError
from infra.progress import Progress, quiet
from infra.warehouse.schema import model_registry, touches
from models import uplift
from tasks import guardrails, measure
from tasks.lookup import features_by_day, read_rows

EVAL_PERCENT = 30  # customers judged, never learned from


def history(engine: Engine, plan: Plan, date_from: dt.date | None = None, date_to: dt.date | None = None) -> pd.DataFrame:
    """Features, churn_score, arm, treated, converted and as_of per customer with a complete goal window."""
    out = measure.load_outcomes(engine, plan, date_from, date_to)
    out = out[out["arm"].isin(["treated", "control"]) & out["complete"].astype(bool)]
    if out.empty:
        return pd.DataFrame(columns=["as_of", "arm", "treated", "converted", "churn_score"])
    days = pd.Series(pd.to_datetime(out["as_of"]).dt.date.to_numpy(), index=out.index.astype(str))
    rows = read_rows(engine, list(days.index), max(days), min(days))
    feats = features_by_day(rows, days)
    t = touches.c
    cond = [t.playbook == plan.name, t.step == measure.STEP, t.as_of >= min(days), t.as_of <= max(days)]
    with engine.connect() as conn:
        recorded = pd.DataFrame(conn.execute(select(t.customer_id, t.as_of, t.score).where(and_(*cond))).all(),
                                columns=["customer_id", "as_of", "churn_score"])
    recorded["as_of"] = pd.to_datetime(recorded["as_of"]).dt.date
    score = recorded.set_index(["customer_id", "as_of"])["churn_score"]
    frame = feats.join(pd.DataFrame({"as_of": days, "arm": out["arm"].to_numpy(),
                                     "converted": out["converted"].astype(bool).to_numpy()}, index=days.index),
                       how="inner")
    keys = list(zip(frame.index, frame["as_of"]))
    frame["churn_score"] = pd.to_numeric(score[~score.index.duplicated()].reindex(keys).to_numpy(), errors="coerce")
    frame["treated"] = frame["arm"] == "treated"
    return frame


def train_and_evaluate(engine: Engine, plan: Plan, date_from: dt.date | None = None, date_to: dt.date | None = None, *,
                       progress: Progress | None = None) -> tuple[uplift.UpliftModel, uplift.Evaluation, pd.DataFrame]:
    """Fit on 70% of the history's customers, judge on the rest; the evaluation is kept in the model's metadata.
    `progress`: a line per stage (the command passes one; default: silent)."""
    say = quiet(progress)
    if plan.goal is None:
        raise ModelError(f"{plan.name} has no goal, so there is nothing to learn uplift on",
                         hint="add `goal: {event: order.placed, window_days: 14}` and let it run with a holdout",
                         code="L509")
    h = history(engine, plan, date_from, date_to)
    if h.empty:
        raise ModelError(f"no randomised history for {plan.name}: no held-out or treated customers whose goal "
                         "window is over", hint="run the playbook with experiment.holdout_percent > 0 and wait "
                         f"{plan.goal.window_days} days after a run", code="L509")
    say(f"history: {len(h):,} customers of the runs {min(h['as_of'])} to {max(h['as_of'])} whose goal window is "
        "over, with their features as of each decision")
    judged = guardrails.buckets(list(h.index), "uplift-eval", plan.name) < EVAL_PERCENT
    train, test = h[~judged], h[judged]
    names = uplift.inputs(h.drop(columns=["as_of", "arm", "treated", "converted"]))
    model = uplift.fit(train[list(names)], train["treated"].to_numpy(), train["converted"].to_numpy(),
                       playbook=plan.name, as_of=max(h["as_of"]), window_days=plan.goal.window_days,
                       meta={"goal": plan.goal.event, "plan_hash": plan.plan_hash,
                             "history": {"from": str(min(h["as_of"])), "to": str(max(h["as_of"])),
                                         "customers": int(len(h))}}, progress=progress)
    say(f"judging on {len(test):,} held-out customers ({uplift.DRAWS:,} bootstrap resamples)")
    risk = test["churn_score"].to_numpy(dtype=float)
    ev = uplift.evaluate(model.predict(test).to_numpy(), risk, test["treated"].to_numpy(), test["converted"].to_numpy())
    model.meta["evaluation"] = ev.to_json()
    model.meta["risk_recorded"] = bool(np.isfinite(risk).any())
    return model, ev, h


def latest(engine: Engine, playbook: str) -> uplift.UpliftModel | None:
    """The newest uplift model registered for this playbook, or None."""
    t = model_registry.c
    with engine.connect() as conn:
        rows = conn.execute(select(t.model_id, t.meta).where(t.name == uplift.NAME)
                            .order_by(t.created_at.desc(), t.model_id.desc())).all()
        mine = next((r.model_id for r in rows if json.loads(r.meta).get("playbook") == playbook), None)
        if mine is None:
            return None
        row = conn.execute(select(model_registry).where(t.model_id == mine)).mappings().first()
    return uplift.UpliftModel.from_record(dict(row))


def require(engine: Engine, playbook: str) -> uplift.UpliftModel:
    model = latest(engine, playbook)
    if model is None:
        raise ModelError(f"no uplift model for {playbook}: its rules use uplift_score",
                         hint=f"train one from its randomised history with `lifecycle uplift {playbook}`", code="L501")
    return model


def for_plan(engine: Engine, plan: Plan) -> uplift.UpliftModel | None:
    """The uplift model a run of this plan needs: its newest, when a rule uses uplift_score (L501 if none)."""
    return require(engine, plan.name) if "uplift_score" in plan.features else None


def add_uplift(frame: pd.DataFrame, model: uplift.UpliftModel | None) -> pd.DataFrame:
    """The `uplift_score` column: the predicted change in the goal's probability a touch makes (null without a model)."""
    out = frame.copy()
    out["uplift_score"] = pd.Series(pd.NA, index=out.index, dtype="Float64")
    if model is not None and len(out):
        out["uplift_score"] = model.predict(out).round(4).astype("Float64")
    return out


@task(name="uplift", cache_policy=NO_CACHE)
def uplift_scores(frame: pd.DataFrame, model: uplift.UpliftModel | None) -> pd.DataFrame:
    return add_uplift(frame, model)
