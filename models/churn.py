"""A calibrated LightGBM churn model: P(no order in the next H days) for customers with an order.

Plain functions over DataFrames (no Prefect, no SQL): `fit` trains on labelled feature frames,
`ChurnModel.predict` scores, `ChurnModel.to_record` / `from_record` make it storable (warehouse
registry and on-disk artifact hold the same record). Besides the catalog's features, the trees see
what the BG/NBD model infers per customer (P(alive), P(no order in H), expected orders), with its
population parameters fitted at training time and stored in the model.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import pandas as pd
import scipy

from infra.errors import ModelError
from infra.progress import Progress, quiet
from models import bgnbd, compiled
from models.calibration import Platt
from tasks.catalog import BY_NAME, FEATURES

# Member tiers become an ordinal so the trees can split on "gold or better".
TIER_ORDER = {"bronze": 0, "silver": 1, "gold": 2, "diamond": 3}
# Candidate catalog features, in a fixed order; a model uses those its training data had.
MODEL_FEATURES = tuple(f.name for f in FEATURES if f.model)
DERIVED_FEATURES = ("bgnbd_p_alive", "bgnbd_p_no_order", "bgnbd_expected_orders")
KNOWN_FEATURES = MODEL_FEATURES + DERIVED_FEATURES
PARAMS = {
    "objective": "binary",
    # Small, well-populated trees: they start from BG/NBD's answer and only need corrections; bigger
    # ones chase noise in spend (backtest, orders only: AUC vs BG/NBD -0.0015/+0.0010 with 31 leaves,
    # +0.0023/+0.0037 with 7, and no loss with engagement data).
    "learning_rate": 0.03,
    "num_leaves": 7,
    "min_data_in_leaf": 300,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 5.0,
    "verbose": -1,
    "num_threads": 2,
    "seed": 7,
    "deterministic": True,
}
MAX_ROUNDS, EARLY_STOP = 1500, 60
# What the stored drift reference describes (part of the version: a model retrained by code that builds
# it differently is a new model, not the old row re-promoted with its old reference).
DRIFT_REFERENCE = "buyers at as_of, the run's even sample"


def usable_features(features: pd.DataFrame) -> tuple[str, ...]:
    """The model inputs a feature frame supports: catalog features present, plus the BG/NBD ones."""
    return tuple(n for n in MODEL_FEATURES if n in features.columns) + DERIVED_FEATURES


def model_matrix(features: pd.DataFrame, names: tuple[str, ...], *, params: bgnbd.BGNBD | None = None,
                 horizon_days: int = 90) -> pd.DataFrame:
    """The float matrix the trees see; missing values stay NaN (LightGBM handles them)."""
    missing = [n for n in names if n not in features.columns and n not in DERIVED_FEATURES]
    if missing:
        raise ModelError(f"the feature table lacks {', '.join(missing)}", code="L502")
    out: dict[str, np.ndarray] = {}
    derived = {}
    if any(n in DERIVED_FEATURES for n in names):
        if params is None:
            raise ModelError("this model needs BG/NBD parameters and has none", code="L503",
                             hint="retrain with `lifecycle model train`")
        x, t_x, T = bgnbd.rfm(features)
        derived = {
            "bgnbd_p_alive": params.p_alive(x, t_x, T),
            "bgnbd_p_no_order": params.p_no_purchase(x, t_x, T, horizon_days),
            "bgnbd_expected_orders": params.expected_purchases(x, t_x, T, horizon_days),
        }
    for name in names:
        if name in derived:
            out[name] = derived[name]
        elif name == "member_tier":
            out[name] = features[name].astype("object").map(TIER_ORDER).to_numpy(dtype="float64")
        else:
            out[name] = pd.to_numeric(features[name], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    return pd.DataFrame(out, index=features.index, columns=list(names))


PRIOR = "bgnbd_p_no_order"  # the trees boost from BG/NBD's own answer and learn corrections to it


def prior_logit(matrix: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """BG/NBD's log-odds of churn per row: the trees' starting score (LightGBM's init_score)."""
    p = np.clip(matrix[:, names.index(PRIOR)], 1e-4, 1 - 1e-4)
    return np.log(p) - np.log1p(-p)


def tree_probability(booster: lgb.Booster, matrix: np.ndarray, names: tuple[str, ...], *,
                     from_prior: bool = True, raw: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Uncalibrated churn probability: BG/NBD's log-odds plus the trees' correction (models trained
    before boosting from the prior have no `prior_mean` in their metadata and use the trees alone).
    `raw`: the trees' sum by another route (models/compiled.py) instead of LightGBM's."""
    z = raw(matrix) if raw is not None else booster.predict(matrix, raw_score=True)
    if from_prior:
        z = z + prior_logit(matrix, names)
    return 1.0 / (1.0 + np.exp(-z))


def feature_dtypes(features: pd.DataFrame, names: tuple[str, ...]) -> dict[str, str]:
    """The dtype each input had at training: a scoring frame must give the same."""
    return {n: (str(features[n].dtype) if n in features.columns else "float64") for n in names}


@dataclass
class ChurnModel:
    """A trained booster, its calibration and BG/NBD parameters, and everything needed to trust it."""

    booster: lgb.Booster
    version: str
    as_of: dt.date
    horizon_days: int
    feature_names: tuple[str, ...]
    metrics: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def bgnbd(self) -> bgnbd.BGNBD | None:
        p = self.meta.get("bgnbd")
        return bgnbd.BGNBD(**p) if p else None

    @property
    def calibration(self) -> Platt | None:
        c = self.meta.get("calibration")
        return Platt.from_dict(c) if c else None

    def matrix(self, features: pd.DataFrame) -> pd.DataFrame:
        return model_matrix(features, self.feature_names, params=self.bgnbd, horizon_days=self.horizon_days)

    def predict_raw(self, features: pd.DataFrame) -> pd.Series:
        """The trees' probability before calibration."""
        matrix = self.matrix(features)
        if matrix.empty:
            return pd.Series(dtype="float64", index=features.index)
        values = matrix.to_numpy()
        return pd.Series(tree_probability(self.booster, values, self.feature_names,
                                          from_prior="prior_mean" in self.meta, raw=self._compiled(values)),
                         index=features.index, dtype="float64")

    def _compiled(self, matrix: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
        """Compiled trees for a batch big enough to repay compiling once per machine (models/compiled.py)."""
        if len(matrix) < compiled.MIN_ROWS:
            return None
        return compiled.raw_predictor(self.booster_text, lambda m: self.booster.predict(m, raw_score=True), matrix)

    @functools.cached_property
    def booster_text(self) -> str:
        return self.booster.model_to_string()

    def predict(self, features: pd.DataFrame) -> pd.Series:
        """Calibrated churn probability per customer (index preserved)."""
        raw = self.predict_raw(features)
        cal = self.calibration
        return raw if cal is None or raw.empty else pd.Series(cal.apply(raw.to_numpy()), index=raw.index)

    def contributions(self, features: pd.DataFrame) -> pd.DataFrame:
        """Per-row SHAP contributions (log-odds) of each input; costly: call it for few rows only.

        The BG/NBD starting score counts as part of the P(no order) input's contribution, measured
        from its average over the training customers, so "their buying pattern says they stopped"
        can rank among the reasons."""
        matrix = self.matrix(features).to_numpy()
        contrib = self.booster.predict(matrix, pred_contrib=True)[:, :-1]
        if "prior_mean" in self.meta:
            prior = prior_logit(matrix, self.feature_names) - self.meta["prior_mean"]
            contrib[:, self.feature_names.index(PRIOR)] += prior
        return pd.DataFrame(contrib, index=features.index, columns=list(self.feature_names))

    def reasons(self, features: pd.DataFrame, top: int = 3) -> pd.DataFrame:
        """The `top` reasons, phrased for ops, that pushed each customer's score up most."""
        from models.reasons import explain

        params = self.bgnbd
        derived = pd.DataFrame(index=features.index)
        if params is not None:  # the customer's BG/NBD numbers, to phrase the "lapse" reason
            rfm = bgnbd.rfm(features)
            derived["bgnbd_p_alive"] = params.p_alive(*rfm)
            derived["bgnbd_expected_orders"] = params.expected_purchases(*rfm, self.horizon_days)
        derived.attrs["horizon_days"] = self.horizon_days
        return explain(features, self.contributions(features), top=top, derived=derived)

    def to_record(self) -> dict:
        """What the registry row and the on-disk artifact both hold."""
        meta = {**self.meta, "feature_names": list(self.feature_names), "metrics": self.metrics}
        return {
            "name": "churn",
            "version": self.version,
            "as_of": self.as_of,
            "horizon_days": self.horizon_days,
            "meta": json.dumps(meta, sort_keys=True, default=str, indent=1),
            "booster": self.booster_text,
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

    def check_schema(self, features: pd.DataFrame | None = None) -> None:
        """Refuse to score when the model's inputs and the data's (or this code's) features differ, saying how."""
        unknown = [n for n in self.feature_names if n not in KNOWN_FEATURES]
        if unknown:
            raise ModelError(
                f"model {self.version} was trained on features this version of lifecycle does not compute: "
                f"{', '.join(unknown)}", hint="retrain with `lifecycle model train`", code="L504")
        if features is None:
            return
        lacking = [n for n in self.feature_names if n not in DERIVED_FEATURES and n not in features.columns]
        extra = [n for n in usable_features(features) if n not in self.feature_names]
        expected = self.meta.get("feature_dtypes", {})
        changed = [f"{n} ({expected[n]} in the model, {features[n].dtype} here)" for n in self.feature_names
                   if n in features.columns and n in expected and str(features[n].dtype) != expected[n]]
        if lacking or extra or changed:
            parts = []
            if lacking:
                tables = sorted({BY_NAME[n].source for n in lacking if n in BY_NAME})
                parts.append(f"missing from the data: {', '.join(lacking)}"
                             + (f" (they come from the {' and '.join(tables)} table)" if tables else ""))
            if extra:
                parts.append(f"in the data but not in the model: {', '.join(extra)}")
            if changed:
                parts.append(f"different types: {', '.join(changed)}")
            raise ModelError(
                f"model {self.version} does not match the data's features: " + "; ".join(parts),
                hint="score with the same tables the model was trained on, or retrain on this data "
                     "(`lifecycle model train`)",
                code="L504",
            )


def fit(train: list[tuple[pd.DataFrame, pd.Series]], stop: tuple[pd.DataFrame, pd.Series],
        calibrate: tuple[pd.DataFrame, pd.Series], *, as_of: dt.date, horizon_days: int,
        params: bgnbd.BGNBD, meta: dict | None = None, progress: Progress | None = None) -> ChurnModel:
    """Train on the stacked training cutoffs, stop early on `stop`, fit calibration on `calibrate`.

    `stop` and `calibrate` are disjoint customers of the latest cutoff: the trees never learn from
    either, and the calibration never sees the rows that chose the number of trees. The drift
    reference is the caller's to add (`flows/training.py`: the buyers at `as_of`, whom runs compare).
    """
    say = quiet(progress)
    names = usable_features(train[0][0])
    build = lambda x: model_matrix(x, names, params=params, horizon_days=horizon_days)  # noqa: E731
    x_train = pd.concat([build(x) for x, _ in train])
    y_train = pd.concat([y for _, y in train]).astype(int)
    x_stop, y_stop = build(stop[0]), stop[1].astype(int)
    x_cal, y_cal = build(calibrate[0]), calibrate[1].astype(int)
    if len(x_train) < 200 or y_train.nunique() < 2 or y_stop.nunique() < 2 or y_cal.nunique() < 2:
        raise ModelError(
            f"not enough history to train: {len(x_train)} training examples"
            f" ({int(y_train.sum())} churned), {len(x_stop) + len(x_cal)} validation examples",
            hint="train on more customers or a longer history (--as-of later, --horizon-days smaller)",
            code="L505",
        )
    # Boosting from BG/NBD's log-odds: the trees only learn what the statistical model misses, and
    # early stopping keeps them from making it worse on data unlike ours.
    dtrain = lgb.Dataset(x_train.to_numpy(), y_train.to_numpy(), feature_name=list(names), free_raw_data=True,
                         init_score=prior_logit(x_train.to_numpy(), names))
    dstop = lgb.Dataset(x_stop.to_numpy(), y_stop.to_numpy(), reference=dtrain,
                        init_score=prior_logit(x_stop.to_numpy(), names))
    say(f"fitting trees on {len(x_train):,} examples (at most {MAX_ROUNDS:,}; early stopping watches "
        f"{len(x_stop):,} customers)")
    booster = lgb.train(PARAMS, dtrain, num_boost_round=MAX_ROUNDS, valid_sets=[dstop],
                        callbacks=[lgb.early_stopping(EARLY_STOP, verbose=False),
                                   say.trees("fitting", MAX_ROUNDS)])
    # keep only the trees early stopping chose, so every later predict (and SHAP) uses the same model
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
    say(f"kept {booster.current_iteration():,} trees (the best on the early-stopping customers); calibrating on "
        f"{len(x_cal):,} customers")
    raw_cal = tree_probability(booster, x_cal.to_numpy(), names)
    platt = Platt.fit(raw_cal, y_cal.to_numpy())
    from models.metrics import brier, roc_auc

    p_cal = platt.apply(raw_cal)
    metrics = {
        "valid_auc": round(roc_auc(y_cal.to_numpy(), p_cal), 4),
        "valid_base_rate": round(float(y_cal.mean()), 4),
        "valid_brier_raw": round(brier(y_cal.to_numpy(), raw_cal), 5),
        "valid_brier_calibrated": round(brier(y_cal.to_numpy(), p_cal), 5),
        "train_examples": int(len(x_train)),
        "train_base_rate": round(float(y_train.mean()), 4),
        "valid_examples": int(len(x_cal) + len(x_stop)),
        "best_iteration": int(booster.current_iteration()),
    }
    fingerprint = hashlib.sha256(
        pd.util.hash_pandas_object(x_train, index=True).values.tobytes()
    ).hexdigest()[:12]
    all_meta = {
        **(meta or {}),
        "data_fingerprint": fingerprint,
        "feature_dtypes": feature_dtypes(train[0][0], names),
        "bgnbd": params.to_dict(),
        "prior_mean": float(prior_logit(x_train.to_numpy(), names).mean()),
        "calibration": platt.to_dict(),
        "libraries": {"lightgbm": lgb.__version__, "pandas": pd.__version__, "numpy": np.__version__,
                      "scipy": scipy.__version__, "python": platform.python_version()},
    }
    # The version names the data *and* the recipe, so retraining the same data with other code or
    # settings registers a new model instead of re-promoting the old one.
    recipe = json.dumps({"params": PARAMS, "inputs": list(names), "boost_from": PRIOR,
                         "lightgbm": lgb.__version__, "drift_reference": DRIFT_REFERENCE}, sort_keys=True)
    version = f"churn-{as_of:%Y%m%d}-h{horizon_days}-{hashlib.sha256((fingerprint + recipe).encode()).hexdigest()[:12]}"
    return ChurnModel(booster, version, as_of, horizon_days, names, metrics, all_meta)
