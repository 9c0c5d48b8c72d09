"""The churn model: it learns something real, stays inside its as-of date, and refuses the wrong schema."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from flows.training import cutoffs_for, labelled, train
from infra.errors import ModelError
from infra.warehouse.schema import orders
from models import registry
from models.churn import ChurnModel, _auc
from tests.conftest import END, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('churn') / 'w.db'}"
    return make_world(url, customers=4000, seed=11)


def test_trained_model_ranks_churners_above_stayers_out_of_time(world):
    model = train(world, END, 90)
    assert model.metrics["valid_auc"] > 0.7
    # and on a cutoff it never saw: the 90 days that end at the as-of date are label only
    feats, label = labelled(world, END - dt.timedelta(days=90), 90)
    assert _auc(label.to_numpy(), model.predict(feats).to_numpy()) > 0.7


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


def test_registry_round_trip_predicts_the_same(world):
    model = train(world, END, 90)
    loaded = registry.require(world)
    feats, _ = labelled(world, END - dt.timedelta(days=90), 90)
    pd.testing.assert_series_equal(model.predict(feats), loaded.predict(feats))
    assert loaded.version == model.version and loaded.meta["libraries"]["lightgbm"]


def test_a_model_with_another_feature_set_is_refused_with_the_difference(world):
    model = train(world, END, 90)
    record = model.to_record()
    other = ChurnModel.from_record(record)
    other.feature_names = other.feature_names[:-1]
    with pytest.raises(ModelError, match=r"only in this version: \['engagement_change'\]"):
        other.check_schema()


def test_no_model_is_a_clear_error(sqlite_url):
    from infra.warehouse.db import open_warehouse, upgrade

    engine = open_warehouse(sqlite_url, create=True)
    upgrade(engine)
    with pytest.raises(ModelError, match="no trained 'churn' model") as err:
        registry.require(engine)
    assert "lifecycle model train" in err.value.hint
