"""Reason codes phrased for an operations person, from SHAP contributions and the feature values.

Related inputs form one reason (recency, its ratio to the usual gap and the gap statistics are all
"no order for 94 days, 3.1x their usual gap"): their SHAP values are summed, the reasons that pushed
the score up most are phrased from the customer's own numbers. Vectorised over the rows given.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FAMILIES: dict[str, tuple[str, ...]] = {
    "recency": ("recency_days", "recency_gap_ratio", "mean_gap_days", "gap_std_days", "max_gap_days"),
    "lapse": ("bgnbd_p_alive", "bgnbd_p_no_order", "bgnbd_expected_orders"),
    "frequency": ("orders_total", "orders_365d", "orders_180d"),
    "trend": ("orders_30d", "orders_90d", "orders_prev_90d", "orders_change_90d"),
    "spend": ("monetary_30d", "monetary_90d", "monetary_prev_90d", "monetary_365d", "monetary_total",
              "monetary_change_90d", "avg_order_value"),
    "tenure": ("tenure_days", "first_order_days"),
    "visits": ("visits_30d", "visits_prev_30d"),
    "engagement": ("engagement_30d", "engagement_prev_30d", "engagement_change", "last_event_days"),
    "messages": ("opens_30d", "clicks_30d", "group_30d"),
    "membership": ("member_tier", "points"),
}
_FAMILY_OF = {name: fam for fam, names in FAMILIES.items() for name in names}


def _num(frame: pd.DataFrame, name: str) -> pd.Series:
    if name not in frame.columns:
        return pd.Series(np.nan, index=frame.index)
    return pd.to_numeric(frame[name], errors="coerce").astype("float64")


def _int(s: pd.Series) -> pd.Series:
    return s.round().astype("Int64").astype("string").fillna("?")


def _pct(change: pd.Series) -> pd.Series:
    return (change.abs() * 100).round().astype("Int64").astype("string") + "%"


def _phrases(f: pd.DataFrame, derived: pd.DataFrame) -> dict[str, pd.Series]:
    """One phrase per family per row, from that row's values."""
    rec, ratio, gap = _num(f, "recency_days"), _num(f, "recency_gap_ratio"), _num(f, "mean_gap_days")
    base = "no order for " + _int(rec) + " days"
    recency = base.where(~(ratio >= 1.5), base + ", " + ratio.round(1).astype("string") + "x their usual gap")
    recency = recency.where(~((ratio < 1.5) & gap.notna()), base + " (usual gap " + _int(gap) + " days)")

    alive, expected = _num(derived, "bgnbd_p_alive"), _num(derived, "bgnbd_expected_orders")
    lapse = ("buys rarely: about " + expected.round(1).astype("string") + " orders expected in the next "
             + str(derived.attrs.get("horizon_days", 90)) + " days").where(
        ~(alive < 0.5), "buying pattern says they have likely stopped (" + (alive * 100).round().astype("Int64")
        .astype("string") + "% chance still active)")

    total, year = _num(f, "orders_total"), _num(f, "orders_365d")
    frequency = (_int(total) + " orders in total, " + _int(year) + " in the last year").where(
        total != 1, "only one order so far")

    o90, oprev = _num(f, "orders_90d"), _num(f, "orders_prev_90d")
    trend = _int(o90) + " orders in the last 90 days vs " + _int(oprev) + " in the 90 before"

    m90, mprev, change = _num(f, "monetary_90d"), _num(f, "monetary_prev_90d"), _num(f, "monetary_change_90d")
    spend = ("spend down " + _pct(change) + " on the 90 days before (" + m90.round().astype("Int64").astype("string")
             + " vs " + mprev.round().astype("Int64").astype("string") + ")").where(
        change < 0, "spent " + m90.round().astype("Int64").astype("string") + " in the last 90 days")

    tenure = "customer for " + _int(_num(f, "tenure_days")) + " days"

    v, vprev = _num(f, "visits_30d"), _num(f, "visits_prev_30d")
    vchange = v / vprev.where(vprev > 0) - 1
    visits = (_int(v) + " visits in the last 30 days").where(
        ~(vchange < 0), "visits down " + _pct(vchange) + " on the month before").where(
        ~((v == 0) & (vprev > 0)), "no visits in the last 30 days (" + _int(vprev) + " the month before)")

    echange, last = _num(f, "engagement_change"), _num(f, "last_event_days")
    engagement = (_int(_num(f, "engagement_30d")) + " interactions in the last 30 days").where(
        ~(echange < 0), "interactions down " + _pct(echange) + " on the month before").where(
        ~(last >= 30), "no interaction for " + _int(last) + " days").where(
        last.notna() | ("last_event_days" not in f.columns), "no interaction in the last 180 days")

    opens, clicks = _num(f, "opens_30d"), _num(f, "clicks_30d")
    messages = ("opened " + _int(opens) + " and clicked " + _int(clicks) + " messages in the last 30 days").where(
        (opens + clicks) > 0, "no message opened or clicked in the last 30 days")

    tier = f["member_tier"].astype("string") if "member_tier" in f.columns else pd.Series(pd.NA, index=f.index, dtype="string")
    membership = (tier.fillna("no-tier") + " member with " + _int(_num(f, "points")) + " points")
    return {"recency": recency, "lapse": lapse, "frequency": frequency, "trend": trend, "spend": spend,
            "tenure": tenure, "visits": visits, "engagement": engagement, "messages": messages,
            "membership": membership}


def explain(features: pd.DataFrame, contributions: pd.DataFrame, top: int = 3,
            derived: pd.DataFrame | None = None) -> pd.DataFrame:
    """reason_1..reason_{top}: the families that raised the score most, phrased; empty when none raised it."""
    fams = [fam for fam in FAMILIES if any(n in contributions.columns for n in FAMILIES[fam])]
    by_family = pd.DataFrame({fam: contributions[[n for n in FAMILIES[fam] if n in contributions.columns]].sum(axis=1)
                              for fam in fams}, index=contributions.index)
    derived = derived if derived is not None else pd.DataFrame(index=features.index)
    phrases = _phrases(features, derived)
    text = np.column_stack([phrases[fam].fillna("").to_numpy(dtype=object) for fam in fams])
    # a family with nothing to say for this customer (no phrase) cannot be a reason: rank the others
    values = np.where(text != "", by_family.to_numpy(), -np.inf)
    order = np.argsort(-values, axis=1, kind="stable")[:, :top]
    picked = np.take_along_axis(text, order, axis=1)
    positive = np.take_along_axis(values, order, axis=1) > 0
    picked = np.where(positive, picked, "")
    out = pd.DataFrame(picked, index=features.index, columns=[f"reason_{i + 1}" for i in range(order.shape[1])])
    for i in range(order.shape[1], top):
        out[f"reason_{i + 1}"] = ""
    return out


def joined(reasons: pd.DataFrame) -> pd.Series:
    """The reasons as one readable string per row ("a; b; c"); empty when there are none."""
    cols = [c for c in reasons.columns if c.startswith("reason_")]
    text = reasons[cols[0]].astype(str)
    for c in cols[1:]:
        nxt = reasons[c].astype(str)
        text = text.where(nxt == "", text + "; " + nxt)
    return text.str.strip("; ")
