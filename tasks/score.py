"""Score: churn probability and reason codes from the registered LightGBM model, for a whole batch."""

from __future__ import annotations

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from models.churn import ChurnModel


def score_frame(features: pd.DataFrame, model: ChurnModel | None) -> pd.DataFrame:
    """Add churn_score; customers who never ordered get no score (outside the model's definition)."""
    out = features.copy()
    out["churn_score"] = pd.Series(pd.NA, index=out.index, dtype="Float64")
    if model is None or out.empty:
        return out
    buyers = out.index[out["orders_total"] > 0]
    if len(buyers):
        out.loc[buyers, "churn_score"] = model.predict(out.loc[buyers]).round(4).to_numpy()
    return out


def add_reasons(frame: pd.DataFrame, model: ChurnModel | None) -> pd.DataFrame:
    """Reason codes (top features pushing the score up) for the customers about to be touched only:
    per-row SHAP values cost ~1 ms each, too much to spend on everyone scored."""
    out = frame.copy()
    out["churn_reasons"] = pd.Series(pd.NA, index=out.index, dtype="string")
    if model is None or out.empty:
        return out
    scored = out.index[out["churn_score"].notna() & (out.get("tier", 0) >= 0)]
    if len(scored):
        out.loc[scored, "churn_reasons"] = model.reasons(out.loc[scored]).to_numpy()
    return out


@task(name="score", cache_policy=NO_CACHE)
def score(features: pd.DataFrame, model: ChurnModel | None) -> pd.DataFrame:
    return score_frame(features, model)


@task(name="reasons", cache_policy=NO_CACHE)
def reasons(allocated: pd.DataFrame, model: ChurnModel | None) -> pd.DataFrame:
    return add_reasons(allocated, model)
