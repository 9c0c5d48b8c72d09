"""Score: churn probability, drift against training, and readable reasons, for a whole batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from models.churn import ChurnModel
from models.drift import DriftPolicy, DriftReport, compare, enforce
from models.reasons import joined
from tasks.render import template_variables

DRIFT_SAMPLE = 100_000  # buyers the drift check compares with training

if TYPE_CHECKING:
    from flows.plan import Plan


def score_frame(features: pd.DataFrame, model: ChurnModel | None) -> pd.DataFrame:
    """Add churn_score; customers who never ordered get no score (outside the model's definition)."""
    out = features.copy(deep=False)  # copy-on-write: the caller's frame stays as it was
    out["churn_score"] = pd.Series(pd.NA, index=out.index, dtype="Float64")
    if model is None or out.empty:
        return out
    model.check_schema(features)
    buyers = out.index[out["orders_total"] > 0]
    if len(buyers):
        out.loc[buyers, "churn_score"] = model.predict(out.loc[buyers]).round(4).to_numpy()
    return out


def add_reasons(frame: pd.DataFrame, model: ChurnModel | None, plan: Plan | None = None) -> pd.DataFrame:
    """Readable reasons ("no order for 94 days, 3.1x their usual gap; ...") for the customers about to be
    touched only: per-row SHAP values cost ~0.5 ms each, too much to spend on everyone scored. With the
    plan, only for customers whose message reads `reasons` (none of the shipped templates does: a
    million-customer run would spend over a minute on reasons nobody reads)."""
    out = frame.copy(deep=False)  # copy-on-write: the caller's frame stays as it was
    out["churn_reasons"] = pd.Series(pd.NA, index=out.index, dtype="string")
    if model is None or out.empty:
        return out
    wanted = out["churn_score"].notna() & (out.get("tier", 0) >= 0)
    if plan is not None:
        wanted &= reads_reasons(out, plan)
    scored = out.index[wanted.to_numpy(dtype=bool)]
    if len(scored):
        out.loc[scored, "churn_reasons"] = joined(model.reasons(out.loc[scored])).to_numpy()
    return out


def reads_reasons(frame: pd.DataFrame, plan: Plan) -> pd.Series:
    """Rows (with segment, tier and variant columns) whose message template or subject uses `reasons`."""
    arms = set()
    for seg in plan.segments:
        for i, tier in enumerate(seg.tiers):
            for name in [None, *(v.name for v in tier.variants)]:
                arm = tier.arm(name)
                if "reasons" in (template_variables(arm.body, plan.partials)
                                 | template_variables(arm.subject or "", plan.partials)):
                    arms.add((seg.name, i, name))
    if not arms or "segment" not in frame:
        return pd.Series(False, index=frame.index)
    variant = frame["variant"] if "variant" in frame else pd.Series(None, index=frame.index, dtype=object)
    keys = zip(frame["segment"], frame["tier"], variant.astype(object).where(variant.notna(), None))
    return pd.Series([(s, int(t), v) in arms for s, t, v in keys], index=frame.index, dtype=bool)


def check_drift(scored: pd.DataFrame, model: ChurnModel | None, *, policy: DriftPolicy = "warn",
                playbook: str = "model score", customers: int | None = None) -> tuple[DriftReport | None, list[str]]:
    """PSI of scores and key features vs the model's training data; warnings, or a RunError under "stop".
    `scored` may be a sample of the run's customers (`drift_sample`); `customers` is how many the run has."""
    if model is None or "drift_reference" not in model.meta:
        return None, []
    buyers = scored[scored["orders_total"] > 0]
    report = compare(model.meta["drift_reference"], buyers)
    return report, enforce(report, policy=policy, playbook=playbook, model_version=model.version,
                           customers=len(scored) if customers is None else customers)


def drift_sample(features: pd.DataFrame, size: int | None = None) -> np.ndarray:
    """Buyers spread evenly over the base (every k-th by position), at most `size` (DRIFT_SAMPLE), as a
    mask: what the drift check compares with training. PSI over ten bins from 100,000 customers moves
    by about 0.001."""
    buyers = np.flatnonzero(features["orders_total"].to_numpy() > 0)
    mask = np.zeros(len(features), dtype=bool)
    mask[buyers[:: max(1, -(-len(buyers) // (size or DRIFT_SAMPLE)))]] = True
    return mask


def to_score(features: pd.DataFrame, entering: np.ndarray, sample: np.ndarray, also: pd.Index | None = None) -> np.ndarray:
    """Which rows a run scores (a mask): today's entrants, the drift sample and the customers `also` needs
    (follow-ups due); nobody else's score is read."""
    keep = entering | sample
    if also is not None and len(also):
        keep |= features.index.isin(also)
    return keep


@task(name="score", cache_policy=NO_CACHE)
def score(features: pd.DataFrame, model: ChurnModel | None) -> pd.DataFrame:
    return score_frame(features, model)


@task(name="drift", cache_policy=NO_CACHE)
def drift(scored: pd.DataFrame, model: ChurnModel | None, policy: DriftPolicy = "warn",
          playbook: str = "playbook", customers: int | None = None) -> DriftReport | None:
    """Warn in the run's log and on its page in the Prefect UI when inputs drifted from training."""
    from prefect import get_run_logger
    from prefect.artifacts import create_markdown_artifact

    report, warnings = check_drift(scored, model, policy=policy, playbook=playbook, customers=customers)
    if report is None:
        return None
    logger = get_run_logger()
    for line in warnings:
        logger.warning("%s: %s", playbook, line)
    if warnings:
        create_markdown_artifact(
            key=f"{playbook.replace('_', '-')}-drift", description="model input drift (PSI) vs training",
            markdown=f"# Drift: {playbook}\n\nModel `{model.version}`: PSI over 0.1 means the inputs moved; "
                     f"over 0.25, the playbook's drift policy ({policy}) applies.\n\n" + report.markdown())
    return report


@task(name="reasons", cache_policy=NO_CACHE)
def reasons(allocated: pd.DataFrame, model: ChurnModel | None, plan: Plan | None = None) -> pd.DataFrame:
    return add_reasons(allocated, model, plan)
