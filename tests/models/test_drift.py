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


def test_the_training_day_compares_with_itself_and_a_moved_population_still_warns(tmp_path):
    """The reference is the population a run's check sees (an even sample of buyers at the as-of day, scored as
    a run scores): scoring the training day right after training warns about nothing, in a shop whose buyers
    changed in the months before it (a sign-up campaign), which the cutoffs the trees learn from predate."""
    import datetime as dt

    from flows.training import train
    from tasks.features import build_features
    from tasks.score import check_drift, drift_sample, score_frame
    from tasks.source import FrameSource
    from tests.conftest import END, add_first_buyers, make_world

    engine = make_world(f"sqlite:///{tmp_path / 'w.db'}", customers=3000, seed=12)
    campaign = dt.datetime.combine(END, dt.time(12)) - dt.timedelta(days=60)
    add_first_buyers(engine, {f"N{i:06d}": campaign + dt.timedelta(hours=i % 1400) for i in range(1500)},
                     campaign - dt.timedelta(days=1))
    model = train(engine, END, 90)

    def run_check(frames: FrameSource):
        feats = build_features(frames.extract(END))
        return check_drift(score_frame(feats[drift_sample(feats)], model), model, playbook="churn_winback")

    frames = FrameSource.from_warehouse(engine)
    report, warnings = run_check(frames)
    assert warnings == [] and report.worst < 0.01, report.psi
    assert set(report.psi) >= {"churn_score", "recency_days", "orders_365d", "monetary_365d", "visits_30d"}
    # a load that lost the last six weeks of orders: recency and the score move, and the check says so
    recent = frames.orders["ordered_at"] >= pd.Timestamp(END - dt.timedelta(days=42))
    report, warnings = run_check(FrameSource(frames.orders[~recent], frames.customers, frames.events))
    assert report.psi["recency_days"] > 0.25
    assert any(line.startswith("drift: recency_days PSI") for line in warnings), warnings
