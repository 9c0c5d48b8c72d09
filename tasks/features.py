"""Features: turn extracted aggregates into the catalog's columns, one row per customer.

The same function serves training (at past cutoffs) and scoring (at the run's as-of date), and the
same aggregates come from SQL (`tasks.extract`) or from in-memory frames (`tasks.source`), so the
model never sees a feature computed differently from the one it is scored on. Features whose table
is absent (no events, no customer table) are left out, not filled in.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.catalog import FEATURES
from tasks.extract import Extract, day_end

# Columns carried next to the features for messages and dispatch, never used by the model.
CONTEXT_COLUMNS = ("first_name", "advisor_id")
FEATURE_COLUMNS = tuple(f.name for f in FEATURES if f.source != "model")
_SOURCE = {f.name: f.source for f in FEATURES}
_ORDER_COUNTS = ("orders_total", "orders_30d", "orders_90d", "orders_prev_90d", "orders_180d", "orders_365d")
_EVENT_COUNTS = ("visits_30d", "visits_prev_30d", "opens_30d", "clicks_30d", "group_30d", "engagement_30d",
                 "engagement_prev_30d")
_MONEY = ("monetary_total", "monetary_30d", "monetary_90d", "monetary_prev_90d", "monetary_365d")


def available_columns(has_customers: bool, has_events: bool) -> tuple[str, ...]:
    """The catalog columns a feature frame has, given which tables the data came with."""
    keep = {"orders", *(("customers",) if has_customers else ()), *(("events",) if has_events else ())}
    return tuple(n for n in FEATURE_COLUMNS if _SOURCE[n] in keep)


def build_features(raw: Extract) -> pd.DataFrame:
    """Catalog features indexed by customer_id; customers with no orders or events get zeros, not gaps."""
    end = pd.Timestamp(day_end(raw.as_of))
    orders = raw.orders.set_index("customer_id")
    if raw.customers is not None:
        frame = raw.customers.set_index("customer_id").join(orders, how="left")
    else:
        frame = orders.copy()
    if raw.events is not None:
        frame = frame.join(raw.events.set_index("customer_id"), how="left")
        for c in _EVENT_COUNTS:
            frame[c] = frame[c].fillna(0).astype("int64")
        with np.errstate(divide="ignore", invalid="ignore"):
            change = frame["engagement_30d"] / frame["engagement_prev_30d"].replace(0, np.nan) - 1.0
        frame["engagement_change"] = change.round(4)
        frame["last_event_days"] = _days_between(frame["last_event_at"], end).astype("Int64")
    for c in _ORDER_COUNTS:
        frame[c] = frame[c].fillna(0).astype("int64")
    for c in _MONEY:
        frame[c] = frame[c].astype("float64").fillna(0.0).round(2)

    frame["recency_days"] = _days_between(frame["last_order_at"], end).astype("Int64")
    frame["first_order_days"] = _days_between(frame["first_order_at"], end).astype("Int64")
    span = (pd.to_datetime(frame["last_order_at"]) - pd.to_datetime(frame["first_order_at"])).dt.total_seconds() / 86400.0
    gaps = (frame["orders_total"] - 1).where(frame["orders_total"] > 1).astype("float64")
    mean_gap = span / gaps
    variance = (frame["gap_sq_sum"].astype("float64") / gaps - mean_gap**2).clip(lower=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        aov = frame["monetary_total"] / frame["orders_total"].replace(0, np.nan)
        orders_change = frame["orders_90d"] / frame["orders_prev_90d"].replace(0, np.nan) - 1.0
        money_change = frame["monetary_90d"] / frame["monetary_prev_90d"].where(frame["monetary_prev_90d"] > 0) - 1.0
        # a zero usual gap (several orders in one instant) says nothing about rhythm: leave the ratio unknown
        ratio = frame["recency_days"].astype("float64") / mean_gap.where(mean_gap > 0)
    # unrounded: SQL (julianday / epoch) and numpy gaps agree to ~1e-6 days, rounding could split them
    frame["mean_gap_days"] = mean_gap
    frame["gap_std_days"] = np.sqrt(variance)
    frame["max_gap_days"] = frame["max_gap_days"].astype("float64").where(gaps.notna())
    frame["recency_gap_ratio"] = ratio
    frame["avg_order_value"] = aov.round(2)
    frame["orders_change_90d"] = orders_change.round(4)
    frame["monetary_change_90d"] = money_change.round(4)

    if raw.customers is not None:
        signed_up = _days_between(frame["signed_up_at"], end)
        frame["tenure_days"] = signed_up.fillna(frame["first_order_days"].astype("float64")).fillna(0).astype("int64")
        frame["points"] = frame["points"].fillna(0).astype("int64")
        frame["days_to_birthday"] = days_to_birthday(frame["birthday"], raw.as_of)
        frame["member_tier"] = frame["member_tier"].astype("string")
        frame["timezone"] = frame["timezone"].astype("string")
        context = list(CONTEXT_COLUMNS)
    else:
        frame["tenure_days"] = frame["first_order_days"].astype("float64").fillna(0).astype("int64")
        context = []
    columns = available_columns(raw.customers is not None, raw.events is not None)
    out = frame[list(columns) + context]
    out.index.name = "customer_id"
    return out


def _days_between(when: pd.Series, end: pd.Timestamp) -> pd.Series:
    """Whole days from `when` to the end of the as-of day, counting the as-of day itself as day 0."""
    delta = (end - pd.to_datetime(when)).dt.total_seconds() / 86400.0
    return np.floor(delta)


def days_to_birthday(birthdays: pd.Series, as_of: dt.date) -> pd.Series:
    """Days until the next birthday on or after as_of; 29 February counts as 28 February in other years."""
    born = pd.to_datetime(pd.Series(birthdays.to_numpy(), index=birthdays.index))
    known = born.notna().to_numpy()
    if not known.any():
        return pd.Series(pd.NA, index=birthdays.index, dtype="Int64")
    month, day = born.dt.month.to_numpy()[known].astype(int), born.dt.day.to_numpy()[known].astype(int)

    def occurrence(year: int) -> np.ndarray:
        leap = (year % 4 == 0 and year % 100 != 0) or year % 400 == 0
        d = np.where((month == 2) & (day == 29) & (not leap), 28, day)
        return pd.to_datetime(pd.DataFrame({"year": year, "month": month, "day": d})).to_numpy()

    today = pd.Timestamp(as_of).to_datetime64()
    this_year, next_year = occurrence(as_of.year), occurrence(as_of.year + 1)
    days = np.zeros(len(born), dtype="int64")
    days[known] = (np.where(this_year >= today, this_year, next_year) - today) // np.timedelta64(1, "D")
    return pd.Series(pd.arrays.IntegerArray(days, ~known), index=birthdays.index)


@task(name="features", cache_policy=NO_CACHE)
def features(raw: Extract) -> pd.DataFrame:
    return build_features(raw)
