"""The demo world answers back: customers respond to the touches they were sent, with known true effects.

The world's own orders are the baseline for both arms: generated from each customer's buying rate
and lifetime (infra/demoworld.py), they are what everyone does untouched. A touch that reaches a
customer (ledger status `sent`) may change that within the playbook's attribution window, by the
customer's latent type for that playbook, drawn from a hash of (seed, playbook, customer):

    persuadable      would not order in the window, orders because of the touch (an order is added)
    do_not_disturb   would order, is put off by the touch (their orders in the window are removed)
    sure_thing       orders either way          lost_cause   orders neither way

How likely each type is depends on the channel, the segment and whether the touch carried an offer
(`Effects`; e.g. a coupon persuades more than a gift). Held-out and unreached customers keep their
baseline, so a measured lift has a true value to be compared with: `Response.truth` holds each
customer's outcome with and without this playbook's touch (every other playbook's effect kept), and
`true_lift` averages it over the treated arm, the quantity an intent-to-treat comparison estimates.

Only for generated demo worlds (`is_demo_world`): responses add and delete orders. Applying twice
changes nothing: a warehouse that already holds response orders after the touches is left alone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine

from infra.demoworld import CATEGORIES, CATEGORY_WEIGHTS
from infra.warehouse.bulk import among, bulk_insert, chunks
from infra.warehouse.schema import customers, orders

ORDER_PREFIX = "RSP"  # response orders: RSP + a hash of (seed, playbook, as-of day, customer)
TYPES = ("persuadable", "do_not_disturb", "sure_thing", "lost_cause")
ORDER_COLUMNS = ("order_id", "customer_id", "ordered_at", "amount", "channel", "category", "items")
TOUCHED_COLUMNS = ("playbook", "customer_id", "as_of", "arm", "status", "segment", "channel", "variant",
                   "has_offer", "anchor", "window_days")
TRUTH_COLUMNS = ("playbook", "customer_id", "as_of", "arm", "status", "segment", "channel", "variant", "type",
                 "converted_with", "converted_without", "revenue_with", "revenue_without")


@dataclass(frozen=True)
class Effects:
    """True effects: the share of reached customers a touch persuades or puts off.

    persuade[channel] is scaled by `offer_boost` when the touch carries an offer and by
    segment_scale[segment] (default 1); disturb[channel] is the share it puts off.
    """

    persuade: Mapping[str, float] = field(default_factory=dict)
    disturb: Mapping[str, float] = field(default_factory=dict)
    offer_boost: float = 1.0
    segment_scale: Mapping[str, float] = field(default_factory=dict)
    delay_days: float = 3.0  # mean days from the touch to a persuaded order

    def rates(self, touched: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(persuade, disturb) probability per touched row."""
        channel = touched["channel"].astype(object)
        p = channel.map(self.persuade).astype(float).fillna(0.0).to_numpy()
        p = p * np.where(touched["has_offer"].astype(bool), self.offer_boost, 1.0)
        p = p * touched["segment"].astype(object).map(self.segment_scale).astype(float).fillna(1.0).to_numpy()
        d = channel.map(self.disturb).astype(float).fillna(0.0).to_numpy()
        return np.clip(p, 0, 1), np.clip(d, 0, 1 - np.clip(p, 0, 1))


# What the demo plays: a personal advisor call-back persuades most; SMS more than push or email; a
# coupon half as much again as a message without one; low-value customers respond half as well.
DEMO_EFFECTS = Effects(
    persuade={"advisor": 0.20, "sms": 0.06, "push": 0.03, "email": 0.02},
    disturb={"sms": 0.01, "push": 0.005, "email": 0.005},
    offer_boost=1.5,
    segment_scale={"low_value": 0.5},
)
NO_EFFECT = Effects()


@dataclass
class Response:
    """What the simulation did, and the truth to measure against."""

    added: pd.DataFrame  # response orders, warehouse columns
    removed: list[str]  # order ids of baseline orders the touches put off
    truth: pd.DataFrame  # per (playbook, customer): arm, type, converted/revenue with and without the touch
    applied: bool = True  # False when the warehouse already held responses (nothing written)

    def true_lift(self, playbook: str, by: str | None = None) -> pd.DataFrame:
        """Mean effect over the treated arm (conversion in points of share, revenue per customer)."""
        return true_lift(self.truth, playbook, by)


def true_lift(truth: pd.DataFrame, playbook: str, by: str | None = None) -> pd.DataFrame:
    """Treated arm's mean of (with - without): rate_diff and revenue_diff, overall or per `by` column."""
    t = truth[(truth["playbook"] == playbook) & (truth["arm"] == "treated")]
    effect = pd.DataFrame({
        "key": t[by].astype(object).to_numpy() if by else "all",
        "rate_diff": t["converted_with"].astype(float).to_numpy() - t["converted_without"].astype(float).to_numpy(),
        "revenue_diff": t["revenue_with"].to_numpy() - t["revenue_without"].to_numpy(),
    })
    out = effect.groupby("key")[["rate_diff", "revenue_diff"]].mean()
    out["n"] = effect.groupby("key").size()
    return out


def uniforms(seed: int, playbook: str, ids, k: int = 3) -> np.ndarray:
    """k stable uniforms in [0, 1) per customer, from a hash of (seed, playbook, customer)."""
    prefix = f"response|{seed}|{playbook}|"
    raw = b"".join(hashlib.sha256((prefix + str(c)).encode()).digest()[: 4 * k] for c in ids)
    return (np.frombuffer(raw, dtype=">u4").reshape(-1, k) / 2**32) if len(ids) else np.zeros((0, k))


def simulate(touched: pd.DataFrame, baseline: pd.DataFrame, typical_amount: pd.Series, *, seed: int,
             effects: Effects = DEMO_EFFECTS, until: dt.datetime | None = None) -> Response:
    """Responses to `touched` (TOUCHED_COLUMNS) given the untouched orders (pure).

    `baseline`: order_id, customer_id, ordered_at, amount of the customers' orders around the windows;
    `typical_amount`: each customer's usual order value (a persuaded order costs about that);
    `until`: no response after this instant (the end of the known data).
    """
    touched = touched.reset_index(drop=True)
    if touched.empty:
        return Response(pd.DataFrame(columns=ORDER_COLUMNS), [], pd.DataFrame(columns=TRUTH_COLUMNS))
    baseline = baseline.assign(ordered_at=pd.to_datetime(baseline["ordered_at"]))
    stop = pd.Timestamp(until) if until is not None else pd.Timestamp.max
    anchor = pd.to_datetime(touched["anchor"])
    end = (anchor + pd.to_timedelta(touched["window_days"].astype(float), unit="D")).clip(upper=stop)

    # baseline orders inside each row's window
    joined = touched[["customer_id"]].assign(row=touched.index, anchor=anchor, end=end).merge(
        baseline, on="customer_id", how="inner")
    joined = joined[(joined["ordered_at"] >= joined["anchor"]) & (joined["ordered_at"] < joined["end"])]
    base_conv = np.isin(touched.index, joined["row"].to_numpy())

    u = np.zeros((len(touched), 3))
    for name, idx in touched.groupby("playbook").groups.items():
        u[idx] = uniforms(seed, str(name), touched.loc[idx, "customer_id"].to_numpy())
    p, d = effects.rates(touched)
    reached = (touched["status"] == "sent").to_numpy()
    persuade = reached & (u[:, 0] < p) & ~base_conv
    disturb = reached & (u[:, 0] >= 1 - d) & base_conv
    kind = np.where(persuade, "persuadable", np.where(disturb, "do_not_disturb",
                    np.where(base_conv, "sure_thing", "lost_cause")))

    # a persuaded order: a truncated exponential delay inside the window, about the usual order value
    span = ((end - anchor).dt.total_seconds() / 86_400).to_numpy()
    m = effects.delay_days
    delay = -m * np.log1p(-u[:, 1] * (1 - np.exp(-np.maximum(span, 0) / m)))
    at = anchor + pd.to_timedelta(delay, unit="D")
    persuade &= (at < end).to_numpy()
    kind = np.where((kind == "persuadable") & ~persuade, "lost_cause", kind)
    amount = typical_amount.reindex(touched["customer_id"]).to_numpy(dtype=float)
    amount = np.where(np.isnan(amount), np.nanmedian(amount) if np.isfinite(amount).any() else 200.0, amount)
    noise = np.exp(0.35 * _normal(u[:, 2]) - 0.35**2 / 2)
    rows = touched[persuade]
    cat = np.searchsorted(np.cumsum(CATEGORY_WEIGHTS), u[persuade, 2] * 0.999999)
    added = pd.DataFrame({
        "order_id": [f"{ORDER_PREFIX}{_digest(seed, r.playbook, r.as_of, r.customer_id)}"
                     for r in rows.itertuples()],
        "customer_id": rows["customer_id"].to_numpy(),
        "ordered_at": at[persuade].dt.floor("s").to_numpy(),
        "amount": np.maximum(np.round(amount[persuade] * noise[persuade], 2), 1.0),
        "channel": "app", "category": np.array(CATEGORIES, dtype=object)[cat], "items": 1,
        "playbook": rows["playbook"].to_numpy(),
    })
    gone = joined[disturb[joined["row"].to_numpy()]]
    removed = pd.DataFrame({"order_id": gone["order_id"].to_numpy(),
                            "playbook": touched.loc[gone["row"], "playbook"].to_numpy()}).drop_duplicates()
    truth = _truth(touched, kind, anchor, end, baseline, added, removed)
    return Response(added.drop(columns="playbook"), sorted(set(removed["order_id"])), truth)


def _truth(touched, kind, anchor, end, baseline, added, removed) -> pd.DataFrame:
    """Each row's conversion and revenue in its window with every response, and without its own playbook's."""
    every = pd.concat([baseline[["order_id", "customer_id", "ordered_at", "amount"]].assign(source=None),
                       added[["order_id", "customer_id", "ordered_at", "amount"]].assign(source=added["playbook"])],
                      ignore_index=True)
    parts = []
    for name, idx in touched.groupby("playbook").groups.items():
        gone_any = set(removed["order_id"])
        gone_others = set(removed.loc[removed["playbook"] != name, "order_id"])
        keep_with = ~every["order_id"].isin(gone_any)
        keep_without = (every["source"] != name) & ~every["order_id"].isin(gone_others)
        part = touched.loc[idx, ["playbook", "customer_id", "as_of", "arm", "status", "segment", "channel",
                                 "variant"]].copy()
        part["type"] = kind[idx]
        win = part[["customer_id"]].assign(row=idx, anchor=anchor[idx], end=end[idx]).merge(
            every.assign(with_=keep_with, without=keep_without), on="customer_id", how="inner")
        win = win[(win["ordered_at"] >= win["anchor"]) & (win["ordered_at"] < win["end"])]
        for label, flag in (("with", "with_"), ("without", "without")):
            w = win[win[flag]]
            part[f"converted_{label}"] = np.isin(idx, w["row"].to_numpy())
            part[f"revenue_{label}"] = w.groupby("row")["amount"].sum().reindex(idx).fillna(0.0).to_numpy()
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _normal(u: np.ndarray) -> np.ndarray:
    """Standard normal quantiles of uniforms (vectorised inverse CDF via the error function's inverse)."""
    from scipy.special import ndtri

    return ndtri(np.clip(u, 1e-9, 1 - 1e-9))


def _digest(seed: int, playbook: str, as_of, customer_id: str) -> str:
    return hashlib.sha256(f"{seed}|{playbook}|{as_of}|{customer_id}".encode()).hexdigest()[:16]


def is_demo_world(engine: Engine) -> bool:
    """A generated world: every address on example.com. Responses never touch a real warehouse."""
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(customers)).scalar_one()
        real = conn.execute(select(func.count()).select_from(customers).where(
            customers.c.email.is_not(None), ~customers.c.email.like("%@example.com"))).scalar_one()
    return total > 0 and real == 0


def respond(engine: Engine, touched: pd.DataFrame, *, seed: int, effects: Effects = DEMO_EFFECTS,
            until: dt.datetime | None = None) -> Response:
    """Simulate the responses to `touched` and write them: response orders in, put-off orders out."""
    if touched.empty:
        return simulate(touched, _no_orders(), pd.Series(dtype=float), seed=seed, effects=effects, until=until)
    ids = sorted(set(touched["customer_id"]))
    start = pd.to_datetime(touched["anchor"]).min().to_pydatetime()
    stop = (pd.to_datetime(touched["anchor"]) + pd.to_timedelta(touched["window_days"], unit="D")).max()
    o = orders.c
    base, history = [], []
    with engine.connect() as conn:
        applied_before = conn.execute(select(func.count()).select_from(orders).where(
            o.order_id.like(f"{ORDER_PREFIX}%"), o.ordered_at >= start)).scalar_one() > 0
        for part in chunks(ids):
            base += conn.execute(select(o.order_id, o.customer_id, o.ordered_at, o.amount).where(
                among(o.customer_id, part), o.ordered_at >= start, o.ordered_at < stop.to_pydatetime(),
                ~o.order_id.like(f"{ORDER_PREFIX}%"))).all()
            history += conn.execute(select(o.customer_id, func.avg(o.amount)).where(
                among(o.customer_id, part), o.ordered_at < start).group_by(o.customer_id)).all()
    baseline = pd.DataFrame(base, columns=["order_id", "customer_id", "ordered_at", "amount"])
    typical = pd.Series({c: float(a) for c, a in history}, dtype=float)
    response = simulate(touched, baseline, typical, seed=seed, effects=effects, until=until)
    if applied_before:
        response.applied = False
        return response
    with engine.begin() as conn:
        bulk_insert(conn, orders, response.added)
        for part in chunks(response.removed):
            conn.execute(delete(orders).where(among(o.order_id, list(part))))
    return response


def _no_orders() -> pd.DataFrame:
    return pd.DataFrame(columns=["order_id", "customer_id", "ordered_at", "amount"])
