"""A LightGBM churn model: P(no order in the next H days) for customers with at least one order.

Plain functions over DataFrames (no Prefect, no SQL): `fit` trains on labelled feature frames,
`ChurnModel.predict` scores, `ChurnModel.to_record` / `from_record` make it storable.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import pandas as pd

from infra.errors import ModelError

# Member tiers become an ordinal so the trees can split on "gold or better".
TIER_ORDER = {"bronze": 0, "silver": 1, "gold": 2, "diamond": 3}
MODEL_FEATURES = (
    "member_tier", "points", "tenure_days", "orders_total", "orders_30d", "orders_90d", "orders_365d",
    "monetary_90d", "monetary_365d", "monetary_total", "avg_order_value", "recency_days",
    "first_order_days", "visits_30d", "visits_prev_30d", "opens_30d", "clicks_30d",
    "engagement_30d", "engagement_prev_30d", "engagement_change",
)
PARAMS = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "num_threads": 2,
    "seed": 7,
    "deterministic": True,
}


def model_matrix(features: pd.DataFrame, names: tuple[str, ...] = MODEL_FEATURES) -> pd.DataFrame:
    """The numeric matrix the trees see; missing values stay NaN (LightGBM handles them)."""
    missing = [n for n in names if n not in features.columns]
    if missing:
        raise ModelError(f"the feature table lacks {', '.join(missing)}", code="L502")
    out = pd.DataFrame(index=features.index)
    for name in names:
        col = features[name]
        if name == "member_tier":
            out[name] = col.astype("object").map(TIER_ORDER).astype("float64")
        else:
            out[name] = pd.to_numeric(col, errors="coerce").astype("float64")
    return out


@dataclass
class ChurnModel:
    """A trained booster plus everything needed to trust and reuse it."""

    booster: lgb.Booster
    version: str
    as_of: dt.date
    horizon_days: int
    feature_names: tuple[str, ...] = MODEL_FEATURES
    metrics: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def predict(self, features: pd.DataFrame) -> pd.Series:
        """Churn probability per customer (index preserved)."""
        matrix = model_matrix(features, self.feature_names)
        if matrix.empty:
            return pd.Series(dtype="float64", index=features.index)
        return pd.Series(self.booster.predict(matrix.to_numpy()), index=features.index, dtype="float64")

    def reasons(self, features: pd.DataFrame, top: int = 3) -> pd.Series:
        """The features that pushed each score up most (LightGBM's per-row SHAP contributions)."""
        matrix = model_matrix(features, self.feature_names)
        contrib = self.booster.predict(matrix.to_numpy(), pred_contrib=True)[:, :-1]
        order = np.argsort(-contrib, axis=1)[:, :top]
        names = np.array(self.feature_names)
        return pd.Series([",".join(names[row]) for row in order], index=features.index)

    def to_record(self) -> dict:
        meta = {
            **self.meta,
            "feature_names": list(self.feature_names),
            "metrics": self.metrics,
        }
        return {
            "name": "churn",
            "version": self.version,
            "as_of": self.as_of,
            "horizon_days": self.horizon_days,
            "meta": json.dumps(meta, sort_keys=True, default=str),
            "booster": self.booster.model_to_string(),
        }

    @classmethod
    def from_record(cls, record: dict) -> ChurnModel:
        meta = json.loads(record["meta"])
        booster = lgb.Booster(model_str=record["booster"])
        names = tuple(meta["feature_names"])
        if tuple(booster.feature_name()) != names:
            raise ModelError(
                f"model {record['version']} is damaged: its trees name features {booster.feature_name()}, "
                f"its metadata {list(names)}",
                hint="retrain with `lifecycle model train`",
                code="L503",
            )
        as_of = record["as_of"]
        if isinstance(as_of, str):
            as_of = dt.date.fromisoformat(as_of)
        return cls(booster, record["version"], as_of, int(record["horizon_days"]), names,
                   meta.get("metrics", {}), meta)

    def check_schema(self, expected: tuple[str, ...] = MODEL_FEATURES) -> None:
        """Refuse a model trained on a different feature set, saying exactly what differs."""
        if tuple(self.feature_names) != tuple(expected):
            extra = sorted(set(self.feature_names) - set(expected))
            lacking = sorted(set(expected) - set(self.feature_names))
            raise ModelError(
                f"model {self.version} was trained on a different feature set"
                f" (only in the model: {extra or 'none'}; only in this version: {lacking or 'none'})",
                hint="retrain with `lifecycle model train`",
                code="L504",
            )


def fit(train: list[tuple[pd.DataFrame, pd.Series]], valid: tuple[pd.DataFrame, pd.Series], *,
        as_of: dt.date, horizon_days: int, cutoffs: list[dt.date]) -> ChurnModel:
    """Train on the stacked training cutoffs; stop early on the later validation cutoff."""
    x_train = pd.concat([model_matrix(x) for x, _ in train])
    y_train = pd.concat([y for _, y in train]).astype(int)
    x_valid, y_valid = model_matrix(valid[0]), valid[1].astype(int)
    if len(x_train) < 200 or y_train.nunique() < 2 or y_valid.nunique() < 2:
        raise ModelError(
            f"not enough history to train: {len(x_train)} training examples"
            f" ({int(y_train.sum())} churned), {len(x_valid)} validation examples",
            hint="train on a warehouse with more customers or a longer history (--as-of later, --horizon-days smaller)",
            code="L505",
        )
    dtrain = lgb.Dataset(x_train.to_numpy(), y_train.to_numpy(), feature_name=list(MODEL_FEATURES),
                         free_raw_data=True)
    dvalid = lgb.Dataset(x_valid.to_numpy(), y_valid.to_numpy(), reference=dtrain)
    booster = lgb.train(
        PARAMS, dtrain, num_boost_round=500, valid_sets=[dvalid],
        callbacks=[lgb.early_stopping(30, verbose=False)],
    )
    p_valid = booster.predict(x_valid.to_numpy(), num_iteration=booster.best_iteration)
    metrics = {
        "valid_auc": round(_auc(y_valid.to_numpy(), p_valid), 4),
        "valid_base_rate": round(float(y_valid.mean()), 4),
        "train_examples": int(len(x_train)),
        "valid_examples": int(len(x_valid)),
        "best_iteration": int(booster.best_iteration),
    }
    fingerprint = hashlib.sha256(
        pd.util.hash_pandas_object(x_train, index=True).values.tobytes()
    ).hexdigest()[:12]
    version = f"churn-{as_of:%Y%m%d}-h{horizon_days}-{fingerprint}"
    meta = {
        "cutoffs": [c.isoformat() for c in cutoffs],
        "data_fingerprint": fingerprint,
        "libraries": {"lightgbm": lgb.__version__, "pandas": pd.__version__, "numpy": np.__version__,
                      "python": platform.python_version()},
    }
    return ChurnModel(booster, version, as_of, horizon_days, MODEL_FEATURES, metrics, meta)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC-AUC via the rank-sum identity (no scikit-learn dependency for one number)."""
    ranks = pd.Series(p).rank().to_numpy()
    pos = y == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
