"""Compiled trees score like LightGBM, are cached per machine, and never decide alone whether a run works."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from flows.training import train
from models import compiled
from tasks.extract import extract_all
from tasks.features import build_features
from tests.conftest import END, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(f"sqlite:///{tmp_path_factory.mktemp('compiled') / 'w.db'}", customers=3000, seed=5)


@pytest.fixture(scope="module")
def buyers(world):
    feats = build_features(extract_all(world, END))
    return feats[feats["orders_total"] > 0]


@pytest.fixture(scope="module")
def model(world):
    return train(world, END, 90)


@pytest.fixture
def always_compile(monkeypatch):
    monkeypatch.setattr(compiled, "MIN_ROWS", 0)
    monkeypatch.setattr(compiled, "_loaded", {})


def _lightgbm(model, frame, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv(compiled.DISABLE_ENV, "0")
        return model.predict(frame)


def test_compiled_trees_give_lightgbms_scores_and_are_compiled_once_per_machine(model, buyers, always_compile,
                                                                                monkeypatch, tmp_path):
    pytest.importorskip("lleaves")
    reference = _lightgbm(model, buyers, monkeypatch)
    fast = model.predict(buyers)
    assert np.abs(fast.to_numpy() - reference.to_numpy()).max() < 1e-12
    assert (fast.round(4) == reference.round(4)).all()  # the scores a run keeps
    cached = list((tmp_path / "home" / "compiled").glob("*.so"))
    assert len(cached) == 1
    compiled._loaded.clear()  # a new process: it loads the cached code instead of compiling again
    stamp = cached[0].stat().st_mtime_ns
    assert (model.predict(buyers) == fast).all()
    assert cached[0].stat().st_mtime_ns == stamp


def test_without_lleaves_scoring_stays_on_lightgbm(model, buyers, always_compile, monkeypatch):
    reference = _lightgbm(model, buyers, monkeypatch)
    monkeypatch.setitem(__import__("sys").modules, "lleaves", None)  # as if it were not installed
    assert (model.predict(buyers) == reference).all()


def test_compiled_trees_that_disagree_with_lightgbm_are_not_used(model, buyers, always_compile, monkeypatch, caplog):
    reference = _lightgbm(model, buyers, monkeypatch)
    monkeypatch.setattr(compiled, "_build", lambda text, key: (lambda m: np.zeros(len(m))))  # a broken compiler
    with caplog.at_level(logging.WARNING, logger="models.compiled"):
        scores = model.predict(buyers)
    assert (scores == reference).all()
    assert "disagree with LightGBM" in caplog.text


def test_a_state_folder_that_cannot_be_written_leaves_scoring_on_lightgbm(model, buyers, always_compile, monkeypatch,
                                                                          tmp_path):
    reference = _lightgbm(model, buyers, monkeypatch)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the state folder should be")
    monkeypatch.setenv("LIFECYCLE_HOME", str(blocked))
    assert (model.predict(buyers) == reference).all()
