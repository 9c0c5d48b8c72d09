"""BG/NBD (Fader, Hardie & Lee 2005): per-customer purchase rate and dropout, by maximum likelihood.

Each customer buys as a Poisson process with rate lambda ~ Gamma(r, alpha) and, after each repeat
purchase, drops out with probability p ~ Beta(a, b). Inputs per customer, in days: x = repeat
purchases, t_x = time of the last purchase after the first, T = time from the first purchase to
the end of the as-of day. Used as a baseline in the backtest and as features for the trees.
Everything is vectorised numpy/scipy; no per-customer Python.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.special import betaln, gammaln, hyp2f1

from infra.errors import ModelError


@dataclass(frozen=True)
class BGNBD:
    """Fitted population parameters (time unit: days)."""

    r: float
    alpha: float
    a: float
    b: float

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    def p_alive(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        """P(still active at T | x, t_x, T); a customer with no repeat purchase cannot have dropped out."""
        x, t_x, T = (np.asarray(v, dtype="float64") for v in (x, t_x, T))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            log_odds = (np.log(self.a) - np.log(np.maximum(self.b + x - 1, 1e-12))
                        + (self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + t_x)))
            out = 1.0 / (1.0 + np.exp(log_odds))
        return np.where(x > 0, out, 1.0)

    def p_no_purchase(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, horizon: float) -> np.ndarray:
        """P(no purchase in (T, T + horizon]) = 1 - P(alive) + P(alive) * ((alpha+T)/(alpha+T+h))^(r+x).

        Given alive, lambda's posterior is Gamma(r + x, alpha + T); dropout only follows a purchase,
        so a customer alive at T who buys nothing cannot drop out within the window.
        """
        x, T = np.asarray(x, dtype="float64"), np.asarray(T, dtype="float64")
        alive = self.p_alive(x, t_x, T)
        silent = np.exp((self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + T + horizon)))
        return 1.0 - alive + alive * silent

    def expected_purchases(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, horizon: float) -> np.ndarray:
        """E[purchases in (T, T + horizon] | x, t_x, T] (FHL 2005, equation 10)."""
        x, t_x, T = (np.asarray(v, dtype="float64") for v in (x, t_x, T))
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = horizon / (alpha + T + horizon)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            front = (a + b + x - 1) / (a - 1)
            body = front * (1 - ((alpha + T) / (alpha + T + horizon)) ** (r + x) * hyp2f1(r + x, b + x, a + b + x - 1, z))
            denom = 1 + (x > 0) * a / np.maximum(b + x - 1, 1e-12) * ((alpha + T) / (alpha + t_x)) ** (r + x)
        return body / denom


def log_likelihood(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Per-customer log-likelihood for (r, alpha, a, b)."""
    r, alpha, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x) - betaln(a, b)
    a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(x > 0, np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x), -np.inf)
    return a1 + a2 + np.logaddexp(a3, a4)


def fit(x: np.ndarray, t_x: np.ndarray, T: np.ndarray, *, max_customers: int = 200_000, seed: int = 0) -> BGNBD:
    """Maximum likelihood on (x, t_x, T); identical rows are weighted once, large inputs subsampled."""
    x, t_x, T = (np.asarray(v, dtype="float64") for v in (x, t_x, T))
    if len(x) > max_customers:  # the likelihood is a mean: a large random sample pins it down
        pick = np.random.default_rng(seed).choice(len(x), max_customers, replace=False)
        x, t_x, T = x[pick], t_x[pick], T[pick]
    if len(x) < 50 or not (x > 0).any():
        raise ModelError(f"BG/NBD needs repeat buyers to fit: {len(x)} customers, {int((x > 0).sum())} repeat buyers",
                         hint="use a longer history (a later --as-of) or more customers", code="L506")
    table = pd.DataFrame({"x": x, "t_x": t_x, "T": T}).value_counts().reset_index()
    xs, txs, Ts, w = (table[c].to_numpy(dtype="float64") for c in ("x", "t_x", "T", "count"))

    def objective(log_params: np.ndarray) -> float:
        ll = log_likelihood(np.exp(log_params), xs, txs, Ts)
        value = -(w * ll).sum() / w.sum()
        return float(value) if np.isfinite(value) else 1e10

    start = np.log([1.0, max(float(np.mean(T)), 1.0) / 10, 1.0, 3.0])
    from scipy.optimize import minimize  # fitting only: scoring runs need not import the optimisers (0.3 s)

    best = minimize(objective, start, method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-10})
    best = minimize(objective, best.x, method="L-BFGS-B", bounds=[(-8, 8), (-8, 12), (-8, 8), (-8, 8)])
    r, alpha, a, b = np.exp(best.x)
    return BGNBD(float(r), float(alpha), float(a), float(b))


def rfm(features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, t_x, T) in days from the feature columns; T counts the as-of day, so it is never 0."""
    total = features["orders_total"].to_numpy(dtype="float64")
    first = pd.to_numeric(features["first_order_days"], errors="coerce").to_numpy(dtype="float64")
    recency = pd.to_numeric(features["recency_days"], errors="coerce").to_numpy(dtype="float64")
    T = first + 1.0
    x = np.maximum(total - 1.0, 0.0)
    t_x = np.where(x > 0, first - recency, 0.0)
    return x, t_x, T


def fit_features(features: pd.DataFrame) -> BGNBD:
    """Fit on the buyers in a feature frame (no labels: only data up to its as-of date)."""
    buyers = features[features["orders_total"] > 0]
    return fit(*rfm(buyers))
