"""Scoring metrics for a binary churn label, vectorised numpy (no scikit-learn for a handful of numbers)."""

from __future__ import annotations

import numpy as np
import pandas as pd

EPS = 1e-12


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC-AUC via the rank-sum identity (ties get average ranks)."""
    y = np.asarray(y).astype(bool)
    ranks = pd.Series(np.asarray(p)).rank().to_numpy()
    n_pos, n_neg = y.sum(), (~y).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pr_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision: precision at each positive, in descending score order (ties grouped)."""
    y = np.asarray(y).astype(float)
    order = np.argsort(-np.asarray(p), kind="stable")
    ys, ps = y[order], np.asarray(p)[order]
    tp = np.cumsum(ys)
    last = np.r_[ps[1:] != ps[:-1], True]  # evaluate at the end of each tie group
    tp, k = tp[last], np.arange(1, len(ys) + 1)[last]
    precision = tp / k
    recall_step = np.diff(np.r_[0.0, tp]) / max(ys.sum(), EPS)
    return float((precision * recall_step).sum())


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype="float64"), 1e-6, 1 - 1e-6)
    y = np.asarray(y, dtype="float64")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, dtype="float64") - np.asarray(y, dtype="float64")) ** 2))


def top_decile_lift(y: np.ndarray, p: np.ndarray) -> float:
    """Churn rate among the 10% highest scores over the overall churn rate."""
    y = np.asarray(y, dtype="float64")
    k = max(int(np.ceil(len(y) * 0.1)), 1)
    top = np.argsort(-np.asarray(p), kind="stable")[:k]
    return float(y[top].mean() / max(y.mean(), EPS))


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Mean prediction vs observed rate in equal-width probability bins (empty bins dropped)."""
    p = np.asarray(p, dtype="float64")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    frame = pd.DataFrame({"bin": idx, "p": p, "y": np.asarray(y, dtype="float64")})
    return frame.groupby("bin").agg(predicted=("p", "mean"), observed=("y", "mean"), n=("y", "size")).reset_index()


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: |observed - predicted| averaged over bins, weighted by their size."""
    t = calibration_table(y, p, bins)
    return float((t["n"] * (t["observed"] - t["predicted"]).abs()).sum() / t["n"].sum())


def roc_curve(y: np.ndarray, p: np.ndarray, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at up to `points` thresholds."""
    y = np.asarray(y).astype(bool)
    order = np.argsort(-np.asarray(p), kind="stable")
    tp, fp = np.cumsum(y[order]), np.cumsum(~y[order])
    pick = np.unique(np.linspace(0, len(y) - 1, points).astype(int))
    return np.r_[0.0, fp[pick] / max(fp[-1], 1)], np.r_[0.0, tp[pick] / max(tp[-1], 1)]


def lift_curve(y: np.ndarray, p: np.ndarray, points: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(share contacted, cumulative lift) when contacting customers in descending score order."""
    y = np.asarray(y, dtype="float64")
    order = np.argsort(-np.asarray(p), kind="stable")
    cum = np.cumsum(y[order]) / np.arange(1, len(y) + 1)
    share = np.linspace(1 / points, 1.0, points)
    at = np.maximum((share * len(y)).astype(int) - 1, 0)
    return share, cum[at] / max(y.mean(), EPS)


def all_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {
        "roc_auc": round(roc_auc(y, p), 4),
        "pr_auc": round(pr_auc(y, p), 4),
        "log_loss": round(log_loss(y, p), 4),
        "brier": round(brier(y, p), 4),
        "top_decile_lift": round(top_decile_lift(y, p), 3),
        "calibration_error": round(calibration_error(y, p), 4),
    }
