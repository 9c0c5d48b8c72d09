"""Drift: stable inputs pass quietly, moved inputs warn, far-moved ones stop a run under the "stop" policy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from infra.errors import RunError
from models.drift import compare, enforce, reference


def _frame(rng, shift: float = 0.0, n: int = 5000) -> pd.DataFrame:
    return pd.DataFrame({"recency_days": rng.exponential(60 + shift, n).round(),
                         "orders_365d": rng.poisson(3, n), "churn_score": rng.beta(2, 2, n)})


def test_psi_is_small_for_the_same_distribution_and_large_for_a_moved_one():
    rng = np.random.default_rng(0)
    train = _frame(rng)
    ref = reference(train, train["churn_score"].to_numpy())
    same = compare(ref, _frame(rng))
    assert same.worst < 0.02 and enforce(same, policy="stop") == []
    moved = compare(ref, _frame(rng, shift=120))
    assert moved.psi["recency_days"] > 0.25 and moved.psi["orders_365d"] < 0.05
    warnings = enforce(moved, policy="warn", playbook="churn_winback")
    assert warnings == [f"drift: recency_days PSI {moved.psi['recency_days']:.2f} vs training (over 0.25)"]
    with pytest.raises(RunError, match=r"churn_winback: stopped before segmenting 5,000 customers.*recency_days \(PSI") as err:
        enforce(moved, policy="stop", playbook="churn_winback", model_version="churn-x", customers=5000)
    assert err.value.code == "L507"


def test_missing_values_are_a_bin_of_their_own():
    rng = np.random.default_rng(1)
    train = _frame(rng)
    ref = reference(train, train["churn_score"].to_numpy())
    later = _frame(rng)
    later.loc[later.index[:2000], "recency_days"] = np.nan  # a broken load: 40% unknown
    assert compare(ref, later).psi["recency_days"] > 0.25
