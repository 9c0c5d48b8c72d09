"""Segment: who enters (the audience rule) and which segment each customer falls in (first match wins)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.expr import evaluate
from flows.plan import Plan


def assign_segments(scored: pd.DataFrame, plan: Plan, as_of: dt.date) -> tuple[pd.DataFrame, dict]:
    """The customers selected by the plan with a `segment` column, and counts for the summary."""
    if plan.audience is not None:
        in_audience = evaluate(plan.audience, scored, as_of=as_of)
    else:
        in_audience = pd.Series(True, index=scored.index)
    audience = scored[in_audience.to_numpy()]
    conditions, names = [], []
    for seg in plan.segments:
        rule = (pd.Series(True, index=audience.index) if seg.rule is None
                else evaluate(seg.rule, audience, as_of=as_of))
        conditions.append(rule.to_numpy(dtype=bool))
        names.append(seg.name)
    labels = np.select(conditions, names, default="") if conditions else np.array([""] * len(audience))
    selected = audience.assign(segment=labels)[labels != ""]
    counts = {
        "customers": int(len(scored)),
        "audience": int(len(audience)),
        "unmatched": int((labels == "").sum()),
        "segments": {name: int((labels == name).sum()) for name in names},
    }
    return selected, counts


@task(name="segment", cache_policy=NO_CACHE)
def segment(scored: pd.DataFrame, plan: Plan, as_of: dt.date) -> tuple[pd.DataFrame, dict]:
    return assign_segments(scored, plan, as_of)
