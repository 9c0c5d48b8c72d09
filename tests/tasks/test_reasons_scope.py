"""Churn reasons (SHAP, ~0.5 ms a customer) are computed only for messages that show them."""

from __future__ import annotations

import pandas as pd

from flows.compiler import compile_file
from infra.settings import SHIPPED_PLAYBOOKS, load_config
from tasks.score import add_reasons


class CountingModel:
    """Stands in for the churn model: records whose reasons were asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def reasons(self, features: pd.DataFrame) -> pd.DataFrame:
        self.asked += list(features.index)
        return pd.DataFrame({"reason_1": "no order for a while", "reason_2": "", "reason_3": ""}, index=features.index)


def _allocated() -> pd.DataFrame:
    return pd.DataFrame({
        "segment": ["high_value", "high_value", "mid_value", "mid_value", "low_value", "low_value"],
        "tier": [0, 1, 0, 0, 0, -1],
        "variant": [None, None, "coupon", "gift", None, None],
        "churn_score": [0.9, 0.8, 0.7, 0.7, 0.75, 0.72],
    }, index=pd.Index(["a", "b", "c", "d", "e", "f"], name="customer_id"))


def _plan(**bodies):
    """churn_winback, with the given (segment, tier) templates replaced by one that shows the reasons."""
    plan = compile_file(SHIPPED_PLAYBOOKS / "churn_winback.yaml", load_config())
    segments = []
    for seg in plan.segments:
        tiers = []
        for i, tier in enumerate(seg.tiers):
            if (seg.name, i) in bodies.get("tiers", ()):
                tier = tier.model_copy(update={"body": "Hi {{ first_name }}: {{ reasons }}"})
            if (seg.name, i) in bodies.get("gift", ()):
                tier = tier.model_copy(update={"variants": tuple(
                    v.model_copy(update={"body": "{{ reasons }}"}) if v.name == "gift" else v for v in tier.variants)})
            tiers.append(tier)
        segments.append(seg.model_copy(update={"tiers": tuple(tiers)}))
    return plan.model_copy(update={"segments": tuple(segments)})


def test_no_template_shows_reasons_so_none_are_computed():
    model = CountingModel()
    out = add_reasons(_allocated(), model, _plan())
    assert model.asked == [] and out["churn_reasons"].isna().all()


def test_only_the_touches_whose_message_shows_them_get_reasons():
    model = CountingModel()
    out = add_reasons(_allocated(), model, _plan(tiers={("high_value", 0)}, gift={("mid_value", 0)}))
    assert sorted(model.asked) == ["a", "d"]  # the advisor tier, and the gift arm of the mid-value SMS
    assert out.loc["a", "churn_reasons"] == "no order for a while" and pd.isna(out.loc["b", "churn_reasons"])


def test_without_a_plan_every_touched_customer_gets_them():
    """`lifecycle plan` previews and other callers that pass no plan keep the old behaviour."""
    model = CountingModel()
    add_reasons(_allocated(), model)
    assert sorted(model.asked) == ["a", "b", "c", "d", "e"]  # f got no tier
