"""The churn model: it learns something real, stays inside its as-of date, calibrates, refuses the wrong schema."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from flows.training import calibration_group, cutoffs_for, fit_at, labelled, train
from infra.errors import ModelError
from infra.warehouse.schema import orders
from models import bgnbd, registry
from models.churn import ChurnModel, fit
from models.metrics import brier, roc_auc
from tasks.features import build_features
from tasks.source import FrameSource
from tests.conftest import END, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('churn') / 'w.db'}"
    return make_world(url, customers=4000, seed=11)


@pytest.fixture(scope="module")
def model(world):
    return train(world, END, 90)


def test_trained_model_ranks_churners_above_stayers_out_of_time(world, model):
    assert model.metrics["valid_auc"] > 0.7
    # and on a cutoff it never saw: the 90 days that end at the as-of date are label only
    feats, label = labelled(world, END - dt.timedelta(days=90), 90)
    assert roc_auc(label.to_numpy(), model.predict(feats).to_numpy()) > 0.7
    assert model.meta["data"]["events"] and "visits_30d" in model.feature_names
    assert set(model.meta) >= {"data_fingerprint", "feature_dtypes", "training_window", "libraries", "bgnbd",
                               "calibration", "drift_reference", "cutoffs"}


def test_training_reads_nothing_after_as_of(world):
    as_of = END - dt.timedelta(days=30)
    first = train(world, as_of, 60)
    with world.begin() as conn:  # orders after the as-of date must not change the model
        conn.execute(orders.insert().values(order_id="late-1", customer_id="C0000001",
                                            ordered_at=dt.datetime.combine(as_of, dt.time()) + dt.timedelta(days=2),
                                            amount=10.0))
    second = train(world, as_of, 60)
    assert second.version == first.version
    assert all(c <= as_of - dt.timedelta(days=60) for c in cutoffs_for(as_of, 60))


def test_post_cutoff_orders_change_no_score(world, model):
    frames = FrameSource.from_warehouse(world)
    as_of = END - dt.timedelta(days=60)
    before = model.predict(build_features(frames.extract(as_of)).query("orders_total > 0"))
    o = frames.orders
    late = o["ordered_at"] >= pd.Timestamp(as_of + dt.timedelta(days=1))
    edited = pd.concat([o[~late], o[late].iloc[::2].assign(amount=lambda d: d["amount"] * 3)])
    after = model.predict(build_features(FrameSource(edited, frames.customers, frames.events).extract(as_of))
                          .query("orders_total > 0"))
    pd.testing.assert_series_equal(before, after)


def test_registry_and_disk_hold_the_same_artifact_and_predict_the_same(world, model, tmp_path):
    registry.save(world, model)  # re-promote: other tests register models of their own
    loaded = registry.require(world)
    folder = registry.save_dir(model, tmp_path / "models")
    from_disk = registry.load_dir(tmp_path / "models")  # via LATEST
    assert (folder / "model.txt").read_text() == loaded.booster.model_to_string() == model.to_record()["booster"]
    feats, _ = labelled(world, END - dt.timedelta(days=90), 90)
    pd.testing.assert_series_equal(model.predict(feats), loaded.predict(feats))
    pd.testing.assert_series_equal(model.predict(feats), from_disk.predict(feats))
    assert from_disk.version == loaded.version == model.version and from_disk.meta["libraries"]["lightgbm"]
    assert from_disk.meta["feature_dtypes"]["recency_days"] == "Int64"


def test_a_model_with_another_feature_set_is_refused_with_the_difference(world, model):
    feats, _ = labelled(world, END - dt.timedelta(days=90), 90)
    with pytest.raises(ModelError, match=r"missing from the data: visits_30d.*\(they come from the events table\)"):
        model.check_schema(feats.drop(columns=["visits_30d", "engagement_30d"]))
    with pytest.raises(ModelError, match=r"different types: recency_days \(Int64 in the model, float64 here\)"):
        model.check_schema(feats.assign(recency_days=feats["recency_days"].astype("float64")))
    other = ChurnModel.from_record(model.to_record())
    other.feature_names = other.feature_names + ("loyalty_score",)
    with pytest.raises(ModelError, match="does not compute: loyalty_score") as err:
        other.check_schema()
    assert err.value.code == "L504"


def test_calibration_lowers_the_brier_score_on_held_out_customers(world):
    """Trees trained on a skewed sample (churners under-represented, as when the base rate moves between
    cutoffs) are miscalibrated; Platt scaling on the calibration group fixes it for customers it never saw."""
    sets = [labelled(world, c, 90) for c in cutoffs_for(END, 90)]
    latest, y = sets[0]
    group = calibration_group(latest.index)
    held_out = pd.util.hash_array(latest.index.astype(str).to_numpy()) % 5 == 1  # neither calibration nor stop
    skewed = []
    for x, label in sets[1:]:
        keep = (label == 0) | (np.arange(len(label)) % 5 == 0)  # a fifth of the churners
        skewed.append((x[keep.to_numpy()], label[keep.to_numpy()]))
    stop = ~group & ~held_out
    model = fit(skewed, (latest[stop], y[stop]), (latest[group], y[group]), as_of=END, horizon_days=90,
                params=bgnbd.fit_features(latest))
    x_out, y_out = latest[held_out], y[held_out].to_numpy()
    raw, calibrated = brier(y_out, model.predict_raw(x_out)), brier(y_out, model.predict(x_out))
    assert calibrated < 0.98 * raw, (raw, calibrated)  # at least 2% lower


def test_orders_alone_train_a_model_without_engagement_features(world):
    frames = FrameSource.from_warehouse(world)
    model = fit_at(FrameSource(frames.orders), END, 90)
    assert not any(n in model.feature_names for n in ("visits_30d", "engagement_change", "member_tier"))
    assert "bgnbd_p_no_order" in model.feature_names and model.meta["data"]["events"] is False


def test_reasons_are_phrased_for_ops(world, model):
    feats, _ = labelled(world, END, 90)
    scores = model.predict(feats)
    top = feats.loc[scores.sort_values(ascending=False).index[:200]]
    reasons = model.reasons(top)
    assert list(reasons.columns) == ["reason_1", "reason_2", "reason_3"]
    first = reasons["reason_1"]
    assert (first != "").all()
    assert first.str.contains(r"no order for \d+ days|interaction|visits|buying pattern|buys rarely|orders").all()
    assert not first.str.contains("_").any()  # no raw feature names
    ratio = reasons.stack().str.extract(r"no order for (\d+) days, ([\d.]+)x their usual gap").dropna()
    if len(ratio):
        row = top.loc[reasons.index[reasons.apply(lambda r: r.str.contains("usual gap")).any(axis=1)][0]]
        assert f"no order for {int(row.recency_days)} days" in " ".join(reasons.loc[row.name])


def test_no_model_is_a_clear_error(sqlite_url):
    from infra.warehouse.db import open_warehouse, upgrade

    engine = open_warehouse(sqlite_url, create=True)
    upgrade(engine)
    with pytest.raises(ModelError, match="no trained 'churn' model") as err:
        registry.require(engine)
    assert "lifecycle model train" in err.value.hint
