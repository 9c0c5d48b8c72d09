"""Segment: who enters (the audience rule, then the re-entry rule) and which segment each customer falls
in (first match wins).

Entry comes before scoring: an audience rule that reads no model score (every shipped one) is
evaluated on the features, the re-entry rule keeps out who entered lately, and only those left are
scored and segmented. A daily run's audience is mostly the customers it saw yesterday, and those who
entered a journey then are kept out for `reentry.days`: scoring them would be work thrown away.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.engine import Engine

from flows.expr import evaluate, features_used
from flows.plan import Plan
from tasks import journeys
from tasks.catalog import BY_NAME
from tasks.common import IO_RETRIES


def reads_model(tree: dict[str, Any] | None) -> bool:
    """Does a rule read a model's output (churn_score, uplift_score)? Then it can only run after scoring."""
    return tree is not None and any(BY_NAME[n].source == "model" for n in features_used(tree) if n in BY_NAME)


def in_audience(frame: pd.DataFrame, plan: Plan, as_of: dt.date) -> np.ndarray:
    if plan.audience is None:
        return np.ones(len(frame), dtype=bool)
    return evaluate(plan.audience, frame, as_of=as_of).to_numpy(dtype=bool, copy=True)


def entrants(engine: Engine, frame: pd.DataFrame, plan: Plan, as_of: dt.date) -> tuple[np.ndarray, dict]:
    """Which rows of `frame` may enter today (a mask): the audience rule (unless it reads a score: then
    segmenting applies it), then the re-entry rule. Counts: customers, audience (before re-entry) and
    not_reentered."""
    early = not reads_model(plan.audience)
    mask = in_audience(frame, plan, as_of) if early else np.ones(len(frame), dtype=bool)
    audience = np.flatnonzero(mask)
    kept_out = journeys.kept_out(engine, frame.index[audience], plan, as_of)
    mask[audience[kept_out]] = False
    counts = {"customers": int(len(frame)), "not_reentered": int(kept_out.sum())}
    if early:
        counts["audience"] = int(len(audience))
    return mask, counts


def assign_segments(scored: pd.DataFrame, plan: Plan, as_of: dt.date) -> tuple[pd.DataFrame, dict]:
    """The customers selected by the plan with a `segment` column, and counts for the summary."""
    audience = scored[in_audience(scored, plan, as_of)]
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


@task(name="re-entry", cache_policy=NO_CACHE, **IO_RETRIES)
def admit_entries(engine: Engine, frame: pd.DataFrame, plan: Plan, as_of: dt.date) -> tuple[np.ndarray, dict]:
    return entrants(engine, frame, plan, as_of)


@task(name="segment", cache_policy=NO_CACHE)
def segment(scored: pd.DataFrame, plan: Plan, as_of: dt.date, entry: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """Segments of the entrants; `entry` (the counts `entrants` gave) keeps the whole base's counts."""
    selected, counts = assign_segments(scored, plan, as_of)
    return selected, {**counts, **(entry or {})}
