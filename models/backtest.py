"""Backtest: train as of each of several past cutoffs, score the next H days, compare with baselines.

For a cutoff c the model is trained with `as_of = c` (so it reads nothing after c) and scored on
the customers with an order by c; the label is "no order in (c, c + H]". The baselines are scored
on the same rows: the base rate, recency alone (a logistic curve on log recency fitted on the
latest labelled cutoff before c), and BG/NBD fitted on the order histories at c.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from flows.training import fit_at, labelled
from infra.progress import Progress, quiet
from models import bgnbd
from models.calibration import Platt
from models.metrics import all_metrics
from tasks.source import Source

MODELS = ("lightgbm", "base_rate", "recency", "bgnbd")


@dataclass
class Backtest:
    horizon_days: int
    cutoffs: list[dt.date]
    predictions: pd.DataFrame  # cutoff, customer_id, label, one column per model
    per_cutoff: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    pooled: dict[str, dict[str, float]] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)  # cutoff -> model version

    def to_json(self) -> dict:
        return {"horizon_days": self.horizon_days, "cutoffs": [c.isoformat() for c in self.cutoffs],
                "customers_scored": int(len(self.predictions)), "pooled": self.pooled,
                "per_cutoff": self.per_cutoff, "model_versions": self.models}


def default_cutoffs(last_day: dt.date, horizon_days: int, n: int = 3, step_days: int = 30) -> list[dt.date]:
    """The latest cutoffs whose label windows end by the last day of data, a month apart, oldest first."""
    latest = last_day - dt.timedelta(days=horizon_days)
    return sorted(latest - dt.timedelta(days=step_days * k) for k in range(n))


def _recency_curve(source: Source, cutoff: dt.date, horizon_days: int) -> Platt:
    """P(churn) from log recency, fitted on the latest cutoff whose labels are known at `cutoff`."""
    feats, y = labelled(source, cutoff - dt.timedelta(days=horizon_days), horizon_days)
    return Platt.fit(_recency_z(feats), y.to_numpy())


def _recency_z(feats: pd.DataFrame) -> np.ndarray:
    from scipy.special import expit

    return expit(np.log1p(feats["recency_days"].astype("float64").to_numpy()) - 4.0)


def run(source: Source, cutoffs: list[dt.date], horizon_days: int = 90, *,
        progress: Progress | None = None) -> Backtest:
    """Train and score at each cutoff; `progress`: a line per stage of each (default: silent)."""
    say = quiet(progress)
    frames = []
    versions = {}
    for i, cutoff in enumerate(cutoffs, 1):
        step = say.under(f"cutoff {i} of {len(cutoffs)} ({cutoff}): ")
        feats, y = labelled(source, cutoff, horizon_days)
        step(f"{len(feats):,} customers to score, {y.mean() if len(y) else 0:.0%} churned in the "
             f"{horizon_days} days after")
        model = fit_at(source, cutoff, horizon_days, today=feats,  # what it scores is its drift reference
                       progress=step.under("training: "))
        params = bgnbd.fit_features(feats)
        frames.append(pd.DataFrame({
            "cutoff": cutoff.isoformat(), "customer_id": feats.index, "label": y.to_numpy(),
            "lightgbm": model.predict(feats).to_numpy(),
            "base_rate": model.metrics["valid_base_rate"],
            "recency": _recency_curve(source, cutoff, horizon_days).apply(_recency_z(feats)),
            "bgnbd": params.p_no_purchase(*bgnbd.rfm(feats), horizon_days),
        }))
        versions[cutoff.isoformat()] = model.version
        step("scored by the model, the base rate, recency alone and BG/NBD")
    preds = pd.concat(frames, ignore_index=True)
    result = Backtest(horizon_days, cutoffs, preds, models=versions)
    for cutoff, group in preds.groupby("cutoff"):
        result.per_cutoff[cutoff] = {m: all_metrics(group["label"].to_numpy(), group[m].to_numpy()) for m in MODELS}
    result.pooled = {m: all_metrics(preds["label"].to_numpy(), preds[m].to_numpy()) for m in MODELS}
    return result


def bootstrap_gap(preds: pd.DataFrame, metric, a: str, b: str, n: int = 200, seed: int = 0) -> tuple[float, float, float]:
    """metric(a) - metric(b) on the pooled rows, with a 95% interval from resampling customers."""
    rng = np.random.default_rng(seed)
    y = preds["label"].to_numpy()
    pa, pb = preds[a].to_numpy(), preds[b].to_numpy()
    point = metric(y, pa) - metric(y, pb)
    gaps = np.empty(n)
    for i in range(n):  # n resamples of the whole vector, not a loop over customers
        idx = rng.integers(0, len(y), len(y))
        gaps[i] = metric(y[idx], pa[idx]) - metric(y[idx], pb[idx])
    lo, hi = np.quantile(gaps, [0.025, 0.975])
    return float(point), float(lo), float(hi)
