"""Uplift: who a touch changes, not only who is at risk.

A two-model estimate (T-learner): one LightGBM classifier of the goal conversion among the treated,
one among the held-out control, each on the same inputs (the churn model's catalog features and the
churn score); a customer's uplift is the difference of the two probabilities. It is trained on a
playbook's randomised history (holdout vs treated, intent to treat, as `tasks/measure.py` defines the
arms), so it estimates what *running the playbook* does to a customer like this, reachability included.

Judged on customers it never saw: rank them by predicted uplift, and by churn score (risk), and count
incremental conversions among the top k% of each ranking: (treated rate - control rate) x customers
targeted, the same budget for both. The area between a curve and random targeting (overall effect x
k) summarises it (a Qini-style score). Plain functions over DataFrames: no Prefect, no SQL.

A winner is named only when the evidence holds one (`Verdict`): at each budget the two counts and
their difference get a 95% interval from a seeded bootstrap over the held-out customers (the rankings
fixed, the customers resampled), and the verdict at VERDICT_SHARE names the ranking that finds more
only when that interval excludes 0 and each arm (treated, held out) has MIN_VERDICT_CONVERSIONS
conversions among the customers either ranking targets; otherwise it says the evidence is too thin, and why.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from infra.errors import ModelError
from infra.progress import Progress, quiet
from models.churn import MODEL_FEATURES
from models.churn import PARAMS as CHURN_PARAMS

NAME = "uplift"
SHARES = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 5%, 10%, ..., 100% of customers targeted
BUDGETS = (0.1, 0.2, 0.3, 0.5)  # the shares the summary reads out
MIN_ARM, MIN_CONVERSIONS = 200, 20  # per arm, to train at all
# the churn model's small, well-populated trees, sized for arms of thousands (the control often a tenth)
PARAMS = {**CHURN_PARAMS, "learning_rate": 0.05, "min_data_in_leaf": 40, "seed": 11}
MAX_ROUNDS, EARLY_STOP = 400, 30
VERDICT_SHARE = 0.2  # the budget the verdict is read at
MIN_VERDICT_CONVERSIONS = 10  # per arm, among the customers either ranking targets, before naming a winner
DRAWS, CONFIDENCE = 1000, 0.95  # bootstrap resamples of the held-out customers; interval level
DRAW_CELLS = 2_000_000  # resampled customers held in memory at once


def inputs(frame: pd.DataFrame) -> tuple[str, ...]:
    """The model inputs a frame supports: the churn model's catalog features present, and the churn score."""
    return tuple(n for n in (*MODEL_FEATURES, "churn_score") if n in frame.columns)


def matrix(frame: pd.DataFrame, names: tuple[str, ...]) -> np.ndarray:
    return np.column_stack([pd.to_numeric(frame[n], errors="coerce").astype("float64").to_numpy() for n in names]) \
        if len(frame) else np.zeros((0, len(names)))


def _split(index: pd.Index, share: float, salt: str) -> np.ndarray:
    """A stable pseudo-random subset (by a hash of the row key): the early-stopping rows."""
    digest = (hashlib.sha256(f"{salt}|{k}".encode()).digest()[:4] for k in index)
    return np.fromiter((int.from_bytes(d, "big") / 2**32 < share for d in digest), dtype=bool, count=len(index))


def _fit_arm(x: np.ndarray, y: np.ndarray, names: tuple[str, ...], stop: np.ndarray, *callbacks) -> lgb.Booster:
    params = {**PARAMS, "min_data_in_leaf": max(PARAMS["min_data_in_leaf"], len(y) // 100)}
    train = lgb.Dataset(x[~stop], y[~stop], feature_name=list(names), free_raw_data=True)
    valid = lgb.Dataset(x[stop], y[stop], reference=train)
    booster = lgb.train(params, train, num_boost_round=MAX_ROUNDS, valid_sets=[valid],
                        callbacks=[lgb.early_stopping(EARLY_STOP, verbose=False), *callbacks])
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))


@dataclass
class UpliftModel:
    """P(convert | treated, x) - P(convert | control, x) for one playbook's goal."""

    playbook: str
    version: str
    as_of: dt.date  # the last as-of day of the history it learned from
    window_days: int
    features: tuple[str, ...]
    treated: lgb.Booster
    control: lgb.Booster
    meta: dict[str, Any] = field(default_factory=dict)

    def predict(self, frame: pd.DataFrame) -> pd.Series:
        """Predicted uplift per row: the change in the goal's probability a touch makes (may be negative)."""
        missing = [n for n in self.features if n not in frame.columns]
        if missing:
            raise ModelError(f"uplift model {self.version} needs inputs the data lacks: {', '.join(missing)}",
                             hint=f"retrain it on this data (`lifecycle uplift {self.playbook}`)", code="L504")
        x = matrix(frame, self.features)
        return pd.Series(self.treated.predict(x) - self.control.predict(x), index=frame.index, name="uplift_score")

    def to_record(self) -> dict[str, Any]:
        """A row for the model registry (name `uplift`; the playbook is in the metadata)."""
        return {"name": NAME, "version": self.version, "as_of": self.as_of, "horizon_days": self.window_days,
                "meta": json.dumps({**self.meta, "playbook": self.playbook, "features": list(self.features)},
                                   sort_keys=True, default=str),
                "booster": json.dumps({"treated": self.treated.model_to_string(),
                                       "control": self.control.model_to_string()})}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> UpliftModel:
        meta = json.loads(record["meta"])
        boosters = json.loads(record["booster"])
        as_of = record["as_of"] if isinstance(record["as_of"], dt.date) else dt.date.fromisoformat(str(record["as_of"]))
        return cls(meta["playbook"], record["version"], as_of, int(record["horizon_days"]), tuple(meta["features"]),
                   lgb.Booster(model_str=boosters["treated"]), lgb.Booster(model_str=boosters["control"]), meta)


def fit(frame: pd.DataFrame, treated: np.ndarray, converted: np.ndarray, *, playbook: str, as_of: dt.date,
        window_days: int, meta: dict[str, Any] | None = None, progress: Progress | None = None) -> UpliftModel:
    """Train the two arms' models on `frame` (features; one row per customer) with their arm and outcome."""
    say = quiet(progress)
    treated, converted = np.asarray(treated, dtype=bool), np.asarray(converted, dtype=bool)
    counts = {"treated": int(treated.sum()), "control": int((~treated).sum()),
              "treated_conversions": int((converted & treated).sum()),
              "control_conversions": int((converted & ~treated).sum())}
    if min(counts["treated"], counts["control"]) < MIN_ARM or \
            min(counts["treated_conversions"], counts["control_conversions"]) < MIN_CONVERSIONS or \
            (converted & treated).sum() == treated.sum() or (converted & ~treated).sum() == (~treated).sum():
        raise ModelError(
            f"not enough randomised history for {playbook} to learn uplift: {counts['treated']:,} treated "
            f"({counts['treated_conversions']:,} converted) and {counts['control']:,} held out "
            f"({counts['control_conversions']:,} converted); each arm needs {MIN_ARM} customers and "
            f"{MIN_CONVERSIONS} conversions (and some who did not convert)",
            hint="let the playbook run longer with a holdout (experiment.holdout_percent), or widen --from/--to",
            code="L509")
    names = inputs(frame)
    x = matrix(frame, names)
    stop = _split(frame.index, 0.2, f"uplift-stop|{playbook}")
    boosters = {}
    for arm, mask in (("treated", treated), ("control", ~treated)):
        say(f"fitting the {arm} arm's model on {int(mask.sum()):,} customers "
            f"({int((converted & mask).sum()):,} converted)")
        boosters[arm] = _fit_arm(x[mask], converted[mask].astype(int), names, stop[mask],
                                 say.trees(f"{arm} arm", MAX_ROUNDS))
    fingerprint = hashlib.sha256(pd.util.hash_pandas_object(frame[list(names)], index=True).values.tobytes()
                                 + treated.tobytes() + converted.tobytes()).hexdigest()[:12]
    recipe = json.dumps({"params": PARAMS, "inputs": list(names), "lightgbm": lgb.__version__}, sort_keys=True)
    version = f"uplift-{playbook[:24]}-{as_of:%Y%m%d}-{hashlib.sha256((fingerprint + recipe).encode()).hexdigest()[:10]}"
    return UpliftModel(playbook, version, as_of, window_days, names, boosters["treated"], boosters["control"],
                       {**(meta or {}), "train": counts})


# ---- judging it --------------------------------------------------------------------------------

def ranking(score: np.ndarray) -> np.ndarray:
    """Row positions from the highest score down; ties (and missing scores, last) in a fixed shuffled order,
    so a coarse score is not favoured by the rows' order."""
    score = np.asarray(score, dtype=float)
    n = len(score)
    shuffle = np.random.default_rng(0).permutation(n)
    return shuffle[np.lexsort((np.arange(n), -np.nan_to_num(score[shuffle], nan=-np.inf)))]


def gains(score: np.ndarray, treated: np.ndarray, converted: np.ndarray, shares=SHARES) -> pd.DataFrame:
    """Incremental conversions when targeting the top `share` by `score`: (treated rate - control rate) x n.

    Ties are broken by a fixed shuffle, so a coarse score is not favoured by the rows' order.
    """
    treated, converted = np.asarray(treated, dtype=bool), np.asarray(converted, dtype=bool)
    n = len(treated)
    order = ranking(score)
    t, y = treated[order], converted[order]
    n_t, n_c = np.cumsum(t), np.cumsum(~t)
    y_t, y_c = np.cumsum(y & t), np.cumsum(y & ~t)
    rows = []
    for share in shares:
        k = max(1, math.ceil(share * n)) if n else 0
        if k == 0:
            rows.append({"share": share, "n": 0, "treated": 0, "control": 0, "incremental": np.nan})
            continue
        i = k - 1
        rate_t = y_t[i] / n_t[i] if n_t[i] else np.nan
        rate_c = y_c[i] / n_c[i] if n_c[i] else np.nan
        rows.append({"share": share, "n": k, "treated": int(n_t[i]), "control": int(n_c[i]),
                     "rate_treated": rate_t, "rate_control": rate_c, "incremental": (rate_t - rate_c) * k})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Budget:
    """Uplift vs risk targeting at one share of customers targeted, with 95% bootstrap intervals.

    `uplift`, `risk`, `difference` (uplift - risk): (value, low, high) in incremental conversions;
    `conversions`: arm ("treated", "control") -> conversions among the customers either ranking targets
    (what the comparison rests on).
    """

    share: float
    n: int
    uplift: tuple[float, float, float]
    risk: tuple[float, float, float]
    difference: tuple[float, float, float]
    conversions: dict[str, int]

    @property
    def too_thin(self) -> list[str]:
        """Why the evidence does not name a winner here (empty when it does)."""
        why = []
        _, low, high = self.difference
        if not (low > 0 or high < 0):  # NaN too: no interval, no winner
            why.append("the 95% interval of the difference includes 0")
        for arm, x in self.conversions.items():
            if x < MIN_VERDICT_CONVERSIONS:
                who = "treated" if arm == "treated" else "held-out"
                why.append(f"only {x:,} {who} customers converted among those either ranking targets, "
                           f"fewer than {MIN_VERDICT_CONVERSIONS}")
        return why

    @property
    def winner(self) -> str | None:
        """"uplift" or "risk" when the evidence holds a winner, else None."""
        return None if self.too_thin else ("uplift" if self.difference[0] > 0 else "risk")

    def to_json(self) -> dict[str, Any]:
        def interval(v: tuple[float, float, float]) -> dict[str, Any]:
            return {"value": _num(v[0]), "low": _num(v[1]), "high": _num(v[2])}

        return {"share": self.share, "n": self.n, "uplift": interval(self.uplift), "risk": interval(self.risk),
                "difference": interval(self.difference), "conversions": self.conversions, "winner": self.winner,
                "too_thin": self.too_thin}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Budget:
        def interval(d: dict[str, Any]) -> tuple[float, float, float]:
            value, low, high = (np.nan if d[k] is None else float(d[k]) for k in ("value", "low", "high"))
            return value, low, high

        return cls(float(data["share"]), int(data["n"]), interval(data["uplift"]), interval(data["risk"]),
                   interval(data["difference"]), {arm: int(x) for arm, x in data["conversions"].items()})


@dataclass(frozen=True)
class Evaluation:
    """Uplift vs risk targeting on held-out customers, at the same share of customers targeted."""

    customers: int
    treated: int
    control: int
    curves: pd.DataFrame  # share, n, uplift, risk, random (incremental conversions), control_in_top_uplift/_risk
    budgets: tuple[Budget, ...] = ()  # at BUDGETS, with intervals (empty in evaluations recorded before them)

    def at(self, share: float) -> dict[str, float]:
        row = self.curves.loc[(self.curves["share"] - share).abs().idxmin()]
        return {k: _num(row[k]) for k in self.curves.columns}

    def area(self, ranking: str) -> float:
        """Mean over the shares of (curve - random): above 0, the ranking finds more than chance does."""
        return float((self.curves[ranking] - self.curves["random"]).mean())

    def budget(self, share: float) -> Budget | None:
        return next((b for b in self.budgets if abs(b.share - share) < 1e-9), None)

    def winner(self, share: float = VERDICT_SHARE) -> str | None:
        """"uplift" or "risk" when the evidence at this budget holds a winner; None when it is too thin
        (or the evaluation has no intervals)."""
        b = self.budget(share)
        return b.winner if b is not None else None

    def verdict(self) -> list[str]:
        """The verdict at VERDICT_SHARE in a sentence or two: a winner with its interval, or why there is none."""
        head = f"verdict at a budget of {VERDICT_SHARE:.0%} of customers: "
        b = self.budget(VERDICT_SHARE)
        if b is None:
            return [head + "none: this evaluation was recorded without intervals (by an older lifecycle); run "
                           "`lifecycle uplift PLAYBOOK` again before reading a winner from it"]
        d, low, high = b.difference
        if b.winner is not None:
            sign = 1 if b.winner == "uplift" else -1
            won, lost = ("uplift", "churn-risk") if b.winner == "uplift" else ("churn-risk", "uplift")
            lo, hi = sorted((sign * low, sign * high))
            return [head + f"{won} targeting finds more incremental conversions than {lost} targeting: "
                           f"{sign * d:+.1f} (95% interval {lo:+.1f} to {hi:+.1f})"]
        return [head + f"too little evidence to name a winner ({'; '.join(b.too_thin)}): uplift minus churn-risk "
                       f"targeting is {with_interval(b.difference)} incremental conversions",
                f"  a winner needs an interval clear of 0 and {MIN_VERDICT_CONVERSIONS} conversions per arm among the "
                "customers either ranking targets: let the playbook run longer with its holdout, then run "
                "`lifecycle uplift` again"]

    def lines(self) -> list[str]:
        """A few sentences: each budget with 95% intervals, how many control customers back each number, the verdict."""
        out = [f"judged on {self.customers:,} customers the uplift model never saw ({self.treated:,} treated, "
               f"{self.control:,} held out): incremental conversions when targeting the top share"
               + (" (95% intervals: bootstrap over these customers)" if self.budgets else "")]
        for share in BUDGETS:
            r, b = self.at(share), self.budget(share)
            by_uplift, by_risk = (f"{r['uplift']:+.1f}", f"{r['risk']:+.1f}") if b is None else \
                (with_interval(b.uplift), with_interval(b.risk))
            out.append(f"  top {share:.0%} ({int(r['n']):,} customers): by uplift {by_uplift}, by churn risk "
                       f"{by_risk}, at random {r['random']:+.1f}  (control customers behind these: "
                       f"{int(r['control_uplift'])} and {int(r['control_risk'])})")
        out.append(f"  area over random (mean across 5%..100%): uplift {self.area('uplift'):+.1f}, "
                   f"risk {self.area('risk'):+.1f}")
        small = [s for s in BUDGETS if min(self.at(s)["control_uplift"], self.at(s)["control_risk"]) < 30]
        if small:
            tops = ", ".join(f"{s:.0%}" for s in small)
            out.append(f"  read with care: fewer than 30 control customers behind the top {tops}")
        return out + self.verdict()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Evaluation:
        """Back from `to_json` (what the registry keeps with the model)."""
        curves = pd.DataFrame(data["curves"]).astype({"share": float}).fillna(np.nan)
        return cls(int(data["customers"]), int(data["treated"]), int(data["control"]), curves,
                   tuple(Budget.from_json(b) for b in data.get("budgets", ())))

    def to_json(self) -> dict[str, Any]:
        verdict = self.budget(VERDICT_SHARE)
        return {"customers": self.customers, "treated": self.treated, "control": self.control,
                "area": {"uplift": round(self.area("uplift"), 3), "risk": round(self.area("risk"), 3)},
                "curves": [{k: _num(v) for k, v in r.items()} for r in self.curves.to_dict("records")],
                "budgets": [b.to_json() for b in self.budgets],
                "verdict": None if verdict is None else {
                    **verdict.to_json(), "text": "; ".join(line.strip() for line in self.verdict()),
                    "rule": f"a winner when the {CONFIDENCE:.0%} bootstrap interval ({DRAWS:,} resamples of the "
                            f"held-out customers) of uplift minus risk excludes 0 and each arm has "
                            f"{MIN_VERDICT_CONVERSIONS}+ conversions among the customers either ranking targets at "
                            f"{VERDICT_SHARE:.0%}"}}


def _signed(v: float) -> str:
    return "-" if v is None or np.isnan(v) else f"{v:+.1f}"


def with_interval(v: tuple[float, float, float]) -> str:
    """"+12.3 (+1.0 to +25.0)": a count with its interval (the count alone when it has none)."""
    if np.isnan(v[1]) or np.isnan(v[2]):
        return _signed(v[0])
    return f"{_signed(v[0])} ({_signed(v[1])} to {_signed(v[2])})"


def _num(v: Any) -> Any:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return int(v) if isinstance(v, (np.integer,)) else (round(float(v), 4) if isinstance(v, (float, np.floating)) else v)


def bootstrap_gains(orders: dict[str, np.ndarray], treated: np.ndarray, converted: np.ndarray, shares,
                    *, draws: int = DRAWS, seed: int = 0) -> dict[str, np.ndarray]:
    """Incremental conversions among the top `shares` of each ranking (`orders`: row positions, best first) in
    `draws` bootstrap resamples of the customers: ranking -> array (draws, len(shares)); NaN where a resample's
    top share has no treated or no control customer.

    Each resample draws n customers with replacement (as multiplicities, the rankings fixed); its top
    k = ceil(share x n) are the first k draws in ranking order. The same resamples serve every ranking,
    so their difference is paired. Seeded: same data, same intervals.
    """
    n = len(treated)
    rng = np.random.default_rng(seed)
    ks = np.array([max(1, math.ceil(s * n)) for s in shares], dtype=float)
    arms = np.column_stack([treated, treated & converted, ~treated, ~treated & converted]).astype(float)
    out = {name: np.full((draws, len(ks)), np.nan) for name in orders}
    per = max(1, DRAW_CELLS // max(n, 1))
    for start in range(0, draws, per):
        b = min(per, draws - start)
        picks = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        weights = np.bincount(picks.ravel(), minlength=b * n).reshape(b, n).astype(float)
        for name, order in orders.items():
            w = weights[:, order]
            upto = np.cumsum(w, axis=1)
            before = upto - w
            for j, k in enumerate(ks):
                counts = (np.minimum(upto, k) - np.minimum(before, k)) @ arms[order]  # (b, 4)
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[name][start:start + b, j] = (counts[:, 1] / counts[:, 0] - counts[:, 3] / counts[:, 2]) * k
    return out


def _interval(point: float, draws: np.ndarray) -> tuple[float, float, float]:
    """The point and a percentile interval; NaN when a tenth of the resamples could not be computed."""
    known = draws[np.isfinite(draws)]
    if np.isnan(point) or len(known) < 0.9 * len(draws):
        return float(point), float("nan"), float("nan")
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(known, [tail, 100 - tail])
    return float(point), float(low), float(high)


def _targeted_conversions(orders: dict[str, np.ndarray], treated: np.ndarray, converted: np.ndarray,
                          k: int) -> dict[str, int]:
    """Conversions per arm among the customers any of the rankings puts in its top k."""
    top = np.zeros(len(treated), dtype=bool)
    for order in orders.values():
        top[order[:k]] = True
    return {"treated": int((converted & treated & top).sum()), "control": int((converted & ~treated & top).sum())}


def evaluate(uplift: np.ndarray, risk: np.ndarray, treated: np.ndarray, converted: np.ndarray, *,
             draws: int = DRAWS, seed: int = 0) -> Evaluation:
    """Uplift and risk rankings of the same held-out customers, with random targeting for reference, and at
    each of BUDGETS the two counts and their difference with 95% bootstrap intervals."""
    treated, converted = np.asarray(treated, dtype=bool), np.asarray(converted, dtype=bool)
    by_uplift = gains(uplift, treated, converted)
    by_risk = gains(risk, treated, converted)
    overall = converted[treated].mean() - converted[~treated].mean() if treated.any() and (~treated).any() else np.nan
    curves = pd.DataFrame({"share": by_uplift["share"], "n": by_uplift["n"], "uplift": by_uplift["incremental"],
                           "risk": by_risk["incremental"], "random": overall * by_uplift["n"],
                           "control_uplift": by_uplift["control"], "control_risk": by_risk["control"]})
    budgets: tuple[Budget, ...] = ()
    n = len(treated)
    if n:
        orders = {"uplift": ranking(uplift), "risk": ranking(risk)}
        resampled = bootstrap_gains(orders, treated, converted, BUDGETS, draws=draws, seed=seed)
        rows = []
        for j, share in enumerate(BUDGETS):
            point = curves.loc[(curves["share"] - share).abs().idxmin()]
            k = int(point["n"])
            rows.append(Budget(
                share, k, _interval(float(point["uplift"]), resampled["uplift"][:, j]),
                _interval(float(point["risk"]), resampled["risk"][:, j]),
                _interval(float(point["uplift"] - point["risk"]), resampled["uplift"][:, j] - resampled["risk"][:, j]),
                _targeted_conversions(orders, treated, converted, k)))
        budgets = tuple(rows)
    return Evaluation(n, int(treated.sum()), int((~treated).sum()), curves, budgets)


def chart(ev: Evaluation, path: Path | str, title: str) -> Path:
    """Incremental conversions by share targeted: uplift ranking, risk ranking, random."""
    from models.report import plt

    c = ev.curves
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.r_[0, c["share"].to_numpy() * 100]
    for col, label, color in (("uplift", "by predicted uplift", "#1b6ca8"), ("risk", "by churn risk", "#e08a1e"),
                              ("random", "at random", "#999999")):
        ax.plot(x, np.r_[0, c[col].to_numpy()], "o-" if col != "random" else ":", color=color, markersize=3,
                label=label)
    ax.axhline(0, color="#dddddd", linewidth=0.8)
    ax.set(xlabel="% of held-out customers targeted", ylabel="incremental conversions", title=title)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
