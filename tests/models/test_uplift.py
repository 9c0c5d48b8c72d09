"""The uplift model on synthetic randomised data with a known effect: it finds the persuadables, who are not the
highest-risk customers, and its curves say so honestly."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from infra.errors import ModelError
from models import uplift


def _world(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Risk (churn_score) lowers the base rate; the touch works only on engaged customers at low or middle risk."""
    rng = np.random.default_rng(seed)
    risk = rng.uniform(0, 1, n)
    engaged = rng.poisson(3, n)
    frame = pd.DataFrame({"churn_score": risk, "engagement_30d": engaged,
                          "recency_days": rng.integers(0, 365, n), "orders_total": rng.integers(1, 20, n)},
                         index=[f"C{i:07d}" for i in range(n)])
    effect = np.where((engaged >= 4) & (risk < 0.6), 0.30, 0.0)
    treated = rng.uniform(size=n) < 0.5
    converted = rng.uniform(size=n) < 0.25 * (1 - risk) + treated * effect
    return frame, treated, converted, effect


def test_uplift_targeting_beats_risk_targeting_at_the_same_budget():
    frame, treated, converted, effect = _world(12_000, seed=1)
    train = np.arange(len(frame)) < 8_000
    model = uplift.fit(frame[train], treated[train], converted[train], playbook="synthetic",
                       as_of=dt.date(2026, 6, 30), window_days=14)
    test = frame[~train]
    predicted = model.predict(test).to_numpy()
    # it learned where the effect is
    assert predicted[effect[~train] > 0].mean() > predicted[effect[~train] == 0].mean() + 0.15
    ev = uplift.evaluate(predicted, test["churn_score"].to_numpy(), treated[~train], converted[~train])
    for share in (0.1, 0.2, 0.3):
        r = ev.at(share)
        assert r["uplift"] > r["risk"] + 0.05 * r["n"], (share, r)
        assert ev.winner(share) == "uplift"
    assert ev.area("uplift") > ev.area("risk")
    # at 100% every ranking targets everyone: same number, the overall effect
    full = ev.at(1.0)
    assert full["uplift"] == pytest.approx(full["risk"]) == pytest.approx(full["random"])
    assert any("top 20%" in line for line in ev.lines())
    # a clear effect on 4,000 customers: the verdict names the winner with an interval clear of 0
    verdict = ev.to_json()["verdict"]
    assert verdict["winner"] == "uplift" and verdict["difference"]["low"] > 0 and verdict["too_thin"] == []
    assert ev.lines()[-1].startswith("verdict at a budget of 20% of customers: uplift targeting finds more "
                                     "incremental conversions than churn-risk targeting: +")
    # what the registry keeps reads back to the same verdict (a report shows it without retraining)
    assert uplift.Evaluation.from_json(ev.to_json()).lines() == ev.lines()


def test_a_thin_held_out_set_names_no_winner():
    """976 held-out customers with 23 conversions (the issue's case): the point estimates differ, so a rule on
    them would crown one ranking; the interval and the conversions behind it say there is no telling."""
    rng = np.random.default_rng(7)
    n = 976
    treated = rng.uniform(size=n) < 0.9
    converted = np.zeros(n, dtype=bool)
    converted[rng.choice(np.flatnonzero(treated), 20, replace=False)] = True
    converted[rng.choice(np.flatnonzero(~treated), 3, replace=False)] = True
    ev = uplift.evaluate(rng.uniform(size=n), rng.uniform(size=n), treated, converted)
    r = ev.at(0.2)
    assert r["uplift"] != r["risk"]  # what the old verdict read a winner from
    assert ev.winner() is None and ev.winner(0.2) is None
    verdict = ev.to_json()["verdict"]
    assert verdict["winner"] is None and verdict["share"] == 0.2
    assert any("held-out customers converted among those either ranking targets, fewer than 10" in why
               for why in verdict["too_thin"]), verdict
    assert verdict["conversions"]["control"] < 10 and "excludes 0" in verdict["rule"]
    low, high = verdict["difference"]["low"], verdict["difference"]["high"]
    assert low < verdict["difference"]["value"] < high
    line = [x for x in ev.lines() if x.startswith("verdict")][0]
    assert line.startswith("verdict at a budget of 20% of customers: too little evidence to name a winner (")
    assert f"({low:+.1f} to {high:+.1f}) incremental conversions" in line
    assert "finds more" not in " ".join(ev.lines())
    # the same from what the registry keeps, and an evaluation kept before intervals names no winner either
    assert uplift.Evaluation.from_json(ev.to_json()).lines() == ev.lines()
    old = {k: v for k, v in ev.to_json().items() if k not in ("budgets", "verdict")}
    before = uplift.Evaluation.from_json(old)
    assert before.winner() is None
    assert before.lines()[-1].startswith("verdict at a budget of 20% of customers: none: this evaluation was "
                                         "recorded without intervals")


def test_bootstrap_intervals_are_seeded_and_paired():
    frame, treated, converted, _ = _world(3_000, seed=5)
    score = frame["churn_score"].to_numpy()
    orders = {"a": uplift.ranking(score), "b": uplift.ranking(score)}
    one = uplift.bootstrap_gains(orders, treated, converted, (0.2, 1.0), draws=200)
    assert np.array_equal(one["a"], uplift.bootstrap_gains(orders, treated, converted, (0.2, 1.0), draws=200)["a"])
    assert np.array_equal(one["a"], one["b"])  # the same resamples for every ranking: differences are paired
    # at 100% every resample's count is its own overall effect x n: centred on the observed one
    observed = (converted[treated].mean() - converted[~treated].mean()) * len(treated)
    assert abs(np.median(one["a"][:, 1]) - observed) < 0.1 * abs(observed) + 5


def test_no_effect_means_no_ranking_beats_random_by_much():
    frame, treated, converted, _ = _world(8_000, seed=2)
    converted = np.random.default_rng(3).uniform(size=len(frame)) < 0.2  # the touch does nothing
    train = np.arange(len(frame)) < 5_000
    model = uplift.fit(frame[train], treated[train], converted[train], playbook="none", as_of=dt.date(2026, 6, 30),
                       window_days=14)
    ev = uplift.evaluate(model.predict(frame[~train]).to_numpy(), frame[~train]["churn_score"].to_numpy(),
                         treated[~train], converted[~train])
    # noise only: within a few conversions per hundred customers targeted of zero, at every budget
    assert (ev.curves["uplift"].abs() <= 0.06 * ev.curves["n"] + 5).all(), ev.curves


def test_gains_count_incremental_conversions():
    # top half: treated convert 2 of 2, control 0 of 2 -> +1.0 x 4; everyone: 3/4 vs 1/4 -> +0.5 x 8
    score = np.array([8, 7, 6, 5, 4, 3, 2, 1])
    treated = np.array([1, 0, 1, 0, 1, 0, 1, 0], dtype=bool)
    converted = np.array([1, 0, 1, 0, 1, 1, 0, 0], dtype=bool)
    g = uplift.gains(score, treated, converted, shares=(0.5, 1.0))
    assert g["incremental"].tolist() == [4.0, 4.0]
    assert g["n"].tolist() == [4, 8] and g["control"].tolist() == [2, 4]


def test_round_trips_through_a_registry_record_and_refuses_thin_history():
    frame, treated, converted, _ = _world(3_000, seed=4)
    model = uplift.fit(frame, treated, converted, playbook="p", as_of=dt.date(2026, 6, 30), window_days=21)
    again = uplift.UpliftModel.from_record(model.to_record())
    assert again.version == model.version and again.playbook == "p" and again.window_days == 21
    assert np.allclose(again.predict(frame.head(50)), model.predict(frame.head(50)))
    with pytest.raises(ModelError) as err:
        uplift.fit(frame.head(300), treated[:300], converted[:300], playbook="p", as_of=dt.date(2026, 6, 30),
                   window_days=21)
    assert err.value.code == "L509" and "holdout" in err.value.hint
    with pytest.raises(ModelError) as err:
        model.predict(frame.drop(columns="engagement_30d"))
    assert "engagement_30d" in err.value.message
