"""Probability calibration: Platt scaling on the trees' log-odds, fitted on rows the trees never saw.

Two parameters (slope and intercept of a logistic regression on logit(p)) are enough to correct
the shift in base rate between training cutoffs and the latest one, and cannot overfit a
held-out set of a few thousand customers the way a step function can.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit


@dataclass(frozen=True)
class Platt:
    slope: float
    intercept: float

    def apply(self, p: np.ndarray) -> np.ndarray:
        z = logit(np.clip(np.asarray(p, dtype="float64"), 1e-6, 1 - 1e-6))
        return expit(self.slope * z + self.intercept)

    def to_dict(self) -> dict:
        return {"method": "platt", "slope": self.slope, "intercept": self.intercept}

    @classmethod
    def from_dict(cls, d: dict) -> Platt:
        return cls(float(d["slope"]), float(d["intercept"]))

    @classmethod
    def fit(cls, p: np.ndarray, y: np.ndarray) -> Platt:
        """Minimise the log-loss of expit(slope * logit(p) + intercept) against y."""
        z = logit(np.clip(np.asarray(p, dtype="float64"), 1e-6, 1 - 1e-6))
        y = np.asarray(y, dtype="float64")

        def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
            q = np.clip(expit(w[0] * z + w[1]), 1e-12, 1 - 1e-12)
            value = -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))
            grad = np.array([np.mean((q - y) * z), np.mean(q - y)])
            return float(value), grad

        from scipy.optimize import minimize  # fitting only: scoring runs need not import it

        best = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
        return cls(float(best.x[0]), float(best.x[1]))
