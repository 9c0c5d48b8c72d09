"""`lifecycle model train`: labelled examples from past cutoffs, a calibrated LightGBM fit, the registry.

No data after the as-of date is used: every cutoff's label window (cutoff, cutoff + H] ends on or
before it. The earlier cutoffs, a month apart, train the trees; the latest cutoff (as_of - H) stops the
boosting early; a fifth of the customers, held out of both at every cutoff, fits the calibration. The BG/NBD
parameters the trees get as features are fitted on the latest cutoff's order history (no labels).

The drift reference is of the customers a run's drift check looks at: the buyers at the as-of day itself
(no label needed), the same even sample (`tasks.score.drift_sample`), scored as a run scores them. So a
run on the training day compares the population with itself, and what moves after it is real drift.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from infra.progress import Progress, quiet
from models import bgnbd, registry
from models.churn import ChurnModel, fit
from models.drift import reference
from tasks.features import build_features
from tasks.score import drift_sample, score_frame
from tasks.source import Source, SqlSource

N_TRAIN_CUTOFFS = 4
CUTOFF_STEP_DAYS = 30


def as_source(data: Engine | Source) -> Source:
    return SqlSource(data) if isinstance(data, Engine) else data


def buyers_at(data: Engine | Source, day: dt.date) -> pd.DataFrame:
    """Features at the end of `day` of the customers with an order by then (whom the model scores)."""
    feats = build_features(as_source(data).extract(day))
    return feats[feats["orders_total"] > 0]


def labelled(data: Engine | Source, cutoff: dt.date, horizon_days: int) -> tuple[pd.DataFrame, pd.Series]:
    """Features at `cutoff` for customers with an order by then; label 1 = no order in the horizon."""
    source = as_source(data)
    feats = buyers_at(source, cutoff)
    buyers = source.buyers(cutoff, horizon_days)
    label = pd.Series(~feats.index.isin(list(buyers)), index=feats.index, dtype=int)
    return feats, label


def cutoffs_for(as_of: dt.date, horizon_days: int, n_train: int = N_TRAIN_CUTOFFS) -> list[dt.date]:
    """Validation cutoff first (its label window ends at as_of), then the training cutoffs, a month apart."""
    last = as_of - dt.timedelta(days=horizon_days)
    return [last - dt.timedelta(days=CUTOFF_STEP_DAYS * k) for k in range(n_train + 1)]


def calibration_group(index: pd.Index) -> np.ndarray:
    """A stable fifth of the customers (by a hash of the id) the trees never see: it fits the calibration."""
    return pd.util.hash_array(index.astype(str).to_numpy()) % 5 == 0


def drift_reference(model: ChurnModel, buyers: pd.DataFrame) -> dict:
    """What a run's drift check will compare with: the even sample of `buyers` it takes, scored as it scores."""
    scored = score_frame(buyers[drift_sample(buyers)], model)
    return reference(scored, scored["churn_score"].to_numpy(dtype="float64", na_value=np.nan))


def fit_at(source: Source, as_of: dt.date, horizon_days: int, *, today: pd.DataFrame | None = None,
           progress: Progress | None = None) -> ChurnModel:
    """Train a model that uses only data up to `as_of`; nothing is registered.

    Customers in the calibration group are held out of the trees at every cutoff; the calibration
    is fitted on them over all cutoffs (so it learns the trees' distortion, not one month's base
    rate); early stopping uses the other customers at the latest cutoff. `today`: the buyers'
    features at `as_of` when the caller has them (the backtest), else they are built here for the
    drift reference. `progress`: a line per stage (command lines pass one; default: silent).
    """
    say = quiet(progress)
    cutoffs = cutoffs_for(as_of, horizon_days)
    sets = []
    for i, c in enumerate(cutoffs, 1):
        sets.append(labelled(source, c, horizon_days))
        x, y = sets[-1]
        say(f"examples at {c} ({i} of {len(cutoffs)} cutoffs): {len(x):,} buyers, "
            f"{y.mean() if len(y) else 0:.0%} churned in the {horizon_days} days after")
    groups = [calibration_group(x.index) for x, _ in sets]
    latest, latest_y = sets[0]
    stop = (latest[~groups[0]], latest_y[~groups[0]])
    calibrate = (pd.concat([x[g] for (x, _), g in zip(sets, groups)]),
                 pd.concat([y[g] for (_, y), g in zip(sets, groups)]))
    train_sets = [(x[~g], y[~g]) for (x, y), g in zip(sets[1:], groups[1:])]
    params = bgnbd.fit_features(latest)
    say(f"BG/NBD fitted on the order histories of {len(latest):,} buyers at {cutoffs[0]}")
    first = min(c for c in cutoffs) - dt.timedelta(days=365)
    meta = {
        "cutoffs": {"early_stopping": cutoffs[0].isoformat(), "training": [c.isoformat() for c in cutoffs[1:]],
                    "calibration": "customers in the calibration group (hash of id % 5 == 0) at every cutoff"},
        "training_window": {"from": first.isoformat(), "to": as_of.isoformat(),
                            "note": "features look back up to 365 days before the earliest cutoff; "
                                    "labels end on or before `to`"},
        "data": {"source": source.describe(), "events": "visits_30d" in latest.columns,
                 "customers": "member_tier" in latest.columns},
    }
    model = fit(train_sets, stop, calibrate, as_of=as_of, horizon_days=horizon_days, params=params, meta=meta,
                progress=progress)
    if today is None:
        today = buyers_at(source, as_of)
    model.meta["drift_reference"] = drift_reference(model, today)
    say(f"drift reference: {int(drift_sample(today).sum()):,} buyers at {as_of}")
    return model


def train(data: Engine | Source, as_of: dt.date, horizon_days: int = 90, *,
          progress: Progress | None = None) -> ChurnModel:
    """Train as of a date; on a warehouse, register the model so flows score with it."""
    model = fit_at(as_source(data), as_of, horizon_days, progress=progress)
    if isinstance(data, Engine):
        registry.save(data, model)
    elif isinstance(data, SqlSource):
        registry.save(data.engine, model)
    return model

