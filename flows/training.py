"""`lifecycle model train`: labelled examples from past cutoffs, a LightGBM fit, the registry.

No data after the as-of date is used: every cutoff's label window (cutoff, cutoff + H] ends on or
before it. The latest cutoff validates (early stopping); the earlier ones train.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
from sqlalchemy.engine import Engine

from models import registry
from models.churn import ChurnModel, fit
from tasks.extract import extract_all, future_order_customers
from tasks.features import build_features

N_TRAIN_CUTOFFS = 3
CUTOFF_STEP_DAYS = 30


def labelled(engine: Engine, cutoff: dt.date, horizon_days: int) -> tuple[pd.DataFrame, pd.Series]:
    """Features at `cutoff` for customers with an order by then; label 1 = no order in the horizon."""
    feats = build_features(extract_all(engine, cutoff))
    feats = feats[feats["orders_total"] > 0]
    buyers = future_order_customers(engine, cutoff, horizon_days)
    label = pd.Series(~feats.index.isin(list(buyers)), index=feats.index, dtype=int)
    return feats, label


def cutoffs_for(as_of: dt.date, horizon_days: int) -> list[dt.date]:
    """Validation cutoff first, then the training cutoffs, each a month earlier."""
    last = as_of - dt.timedelta(days=horizon_days)
    return [last - dt.timedelta(days=CUTOFF_STEP_DAYS * k) for k in range(N_TRAIN_CUTOFFS + 1)]


def train(engine: Engine, as_of: dt.date, horizon_days: int = 90) -> ChurnModel:
    cutoffs = cutoffs_for(as_of, horizon_days)
    valid = labelled(engine, cutoffs[0], horizon_days)
    train_sets = [labelled(engine, c, horizon_days) for c in cutoffs[1:]]
    model = fit(train_sets, valid, as_of=as_of, horizon_days=horizon_days, cutoffs=cutoffs)
    registry.save(engine, model)
    return model
