"""Entry before scoring: the audience and re-entry rules pick who is scored and segmented, and the
decisions are those of scoring everyone first."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from flows.compiler import compile_file
from flows.training import train
from infra.settings import SHIPPED_PLAYBOOKS, load_config
from infra.warehouse.bulk import insert_ignore
from infra.warehouse.schema import journeys
from tasks.extract import extract_all
from tasks.features import build_features
from tasks.journeys import kept_out
from tasks.score import drift_sample, score_frame, to_score
from tasks.segment import assign_segments, entrants, reads_model
from tests.conftest import END, make_world


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('segment') / 'w.db'}"
    engine = make_world(url, customers=2500, seed=4)
    model = train(engine, END, 90)
    feats = build_features(extract_all(engine, END))
    return engine, model, feats


def _enter(engine, plan, ids, day):
    """These customers entered the playbook's journey on `day` (the re-entry rule keeps them out after)."""
    rows = pd.DataFrame({"playbook": plan.name, "customer_id": ids, "entered_on": day, "plan_hash": plan.plan_hash,
                         "playbook_version": plan.version, "segment": "high_value", "arm": "treated",
                         "state": "done", "updated_at": dt.datetime(2026, 1, 1)})
    with engine.begin() as conn:
        insert_ignore(conn, journeys, rows, ["playbook", "customer_id", "entered_on"])


def _everyone_first(engine, model, feats, plan):
    """The order before: score every buyer, segment, then apply the re-entry rule."""
    selected, _ = assign_segments(score_frame(feats, model), plan, END)
    return selected[~kept_out(engine, selected.index, plan, END)]


@pytest.mark.parametrize("audience", [None, "orders_total >= 1 and churn_score >= 0.3"])
def test_scoring_only_the_entrants_decides_as_scoring_everyone(scene, audience, monkeypatch):
    engine, model, feats = scene
    monkeypatch.setattr("tasks.score.DRIFT_SAMPLE", 200)
    plan = compile_file(SHIPPED_PLAYBOOKS / "churn_winback.yaml", load_config())
    if audience:  # an audience that reads the score can only be applied after scoring
        from flows.expr import compile_expr
        plan = plan.model_copy(update={"audience": compile_expr(audience), "audience_text": audience})
    assert reads_model(plan.audience) == bool(audience)
    buyers = feats.index[feats["orders_total"] > 0]
    _enter(engine, plan, list(buyers[::3]), END - dt.timedelta(days=5))

    entering, entry = entrants(engine, feats, plan, END)
    keep = to_score(feats, entering, drift_sample(feats))
    scored = score_frame(feats[keep], model)
    selected, counts = assign_segments(scored[entering[keep]], plan, END)

    before = _everyone_first(engine, model, feats, plan)
    assert len(selected) > 100
    pd.testing.assert_series_equal(selected["segment"], before["segment"])
    pd.testing.assert_series_equal(selected["churn_score"], before["churn_score"])
    assert entry["not_reentered"] > 0 and not set(feats.index[entering]) & set(buyers[::3])
    scored_ids = set(scored.index[scored["churn_score"].notna()])
    assert scored_ids >= set(selected.index) and len(scored_ids) < len(buyers)
    assert not (set(buyers[::3]) - set(feats.index[drift_sample(feats)])) & scored_ids, "those kept out are not scored"
    assert sum(counts["segments"].values()) == len(selected)


def test_the_drift_sample_is_spread_over_all_buyers(scene):
    _, _, feats = scene
    buyers = feats.index[feats["orders_total"] > 0]
    assert list(feats.index[drift_sample(feats)]) == list(buyers)  # a small base: every buyer
    sample = feats.index[drift_sample(feats, size=100)]
    assert 50 < len(sample) <= 100 and set(sample) <= set(buyers)
    assert sample[0] == buyers[0] and sample[-1] >= buyers[-len(buyers) // 100 - 1]
