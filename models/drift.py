"""Drift: the population stability index (PSI) of scores and key features, scoring time vs training.

At training, `reference` stores decile edges and shares of the scores and key features of the
buyers at the as-of day, the even sample a run's check takes, scored as a run scores them
(flows/training.py), in the model. At scoring, `compare` bins today's values on the same edges: the
same population, so a run on the training day finds nothing, and what moves after it is drift. PSI above
WARN (0.1) is a warning ops see in the Prefect UI; above STOP (0.25) the playbook's policy applies:
"warn" (default) keeps going, "stop" raises a RunError naming the playbook and what drifted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from infra.errors import ModelError

WARN, STOP = 0.1, 0.25
# not tenure or first-order age: they grow by H days between training and scoring by construction
KEY_FEATURES = ("recency_days", "orders_365d", "monetary_365d", "mean_gap_days",
                "engagement_30d", "visits_30d")
DriftPolicy = Literal["warn", "stop"]
_FLOOR = 1e-4  # an empty bin counts as this share, so PSI stays finite


def _values(series: pd.Series | np.ndarray) -> np.ndarray:
    return pd.to_numeric(pd.Series(series), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _binned(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Shares per bin: the inner edges split the real line; the last bin holds missing values."""
    known = ~np.isnan(values)
    idx = np.searchsorted(edges, values[known], side="right")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(float)
    counts = np.r_[counts, (~known).sum()]
    return counts / max(len(values), 1)


def _profile(values: np.ndarray, bins: int = 10) -> dict:
    known = values[~np.isnan(values)]
    edges = np.unique(np.quantile(known, np.linspace(0, 1, bins + 1)[1:-1])) if len(known) else np.array([])
    return {"edges": [float(e) for e in edges], "shares": [float(s) for s in _binned(values, edges)]}


def reference(features: pd.DataFrame, scores: np.ndarray) -> dict:
    """Distributions to compare against later: the score and the key features present."""
    ref = {"churn_score": _profile(np.asarray(scores, dtype="float64"))}
    for name in KEY_FEATURES:
        if name in features.columns:
            ref[name] = _profile(_values(features[name]))
    return ref


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e, a = np.maximum(expected, _FLOOR), np.maximum(actual, _FLOOR)
    return float(((a - e) * np.log(a / e)).sum())


@dataclass(frozen=True)
class DriftReport:
    psi: dict[str, float]

    @property
    def worst(self) -> float:
        return max(self.psi.values(), default=0.0)

    def over(self, threshold: float) -> dict[str, float]:
        return {k: v for k, v in sorted(self.psi.items(), key=lambda kv: -kv[1]) if v > threshold}

    def markdown(self) -> str:
        lines = ["| input | PSI | status |", "| --- | --- | --- |"]
        for name, value in sorted(self.psi.items(), key=lambda kv: -kv[1]):
            status = "far drifted" if value > STOP else "drifted" if value > WARN else "stable"
            lines.append(f"| `{name}` | {value:.3f} | {status} |")
        return "\n".join(lines)


def compare(ref: dict, frame: pd.DataFrame) -> DriftReport:
    """PSI per input in the reference that the frame has (churn_score included when scored)."""
    out = {}
    for name, profile in ref.items():
        if name not in frame.columns:
            continue
        values = _values(frame[name])
        if name == "churn_score":
            values = values[~np.isnan(values)]  # never-buyers get no score by definition
        out[name] = round(psi(np.asarray(profile["shares"]), _binned(values, np.asarray(profile["edges"]))), 4)
    return DriftReport(out)


def enforce(report: DriftReport, *, policy: DriftPolicy = "warn", playbook: str = "model score",
            model_version: str = "", customers: int = 0) -> list[str]:
    """Warning lines for drift over WARN; with policy "stop", a RunError when anything is over STOP."""
    if policy not in ("warn", "stop"):
        raise ValueError(f"drift policy must be 'warn' or 'stop', not {policy!r}")
    far = report.over(STOP)
    if far and policy == "stop":
        listed = ", ".join(f"{k} (PSI {v:.2f})" for k, v in far.items())
        raise ModelError(
            f"{playbook}: stopped before segmenting {customers:,} customers: inputs drifted far from model "
            f"{model_version}'s training data: {listed}",
            hint="check the data load; if the change is real, retrain with `lifecycle model train`, or set the "
                 "playbook's drift policy to 'warn'",
            code="L507",
        )
    return [f"drift: {k} PSI {v:.2f} vs training (over {STOP if v > STOP else WARN})" for k, v in report.over(WARN).items()]
