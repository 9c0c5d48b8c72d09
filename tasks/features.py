"""Features: turn extracted aggregates into the catalog's columns, one row per customer.

The same function serves training (at past cutoffs) and scoring (at the run's as-of date), so the
model never sees a feature computed differently from the one it is scored on.
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
FEATURE_COLUMNS = tuple(f.name for f in FEATURES if f.name != "churn_score")
_COUNTS = ("orders_total", "orders_30d", "orders_90d", "orders_365d", "visits_30d", "visits_prev_30d",
           "opens_30d", "clicks_30d", "engagement_30d", "engagement_prev_30d")
_MONEY = ("monetary_total", "monetary_90d", "monetary_365d")


def build_features(raw: Extract) -> pd.DataFrame:
    """Catalog features indexed by customer_id; customers with no orders or events get zeros, not gaps."""
    end = pd.Timestamp(day_end(raw.as_of))
    frame = (
        raw.customers.set_index("customer_id")
        .join(raw.orders.set_index("customer_id"), how="left")
        .join(raw.events.set_index("customer_id"), how="left")
    )
    for c in _COUNTS:
        frame[c] = frame[c].fillna(0).astype("int64")
    for c in _MONEY:
        frame[c] = frame[c].astype("float64").fillna(0.0).round(2)
    frame["points"] = frame["points"].fillna(0).astype("int64")

    frame["tenure_days"] = _days_between(frame["signed_up_at"], end).fillna(0).astype("int64")
    frame["recency_days"] = _days_between(frame["last_order_at"], end).astype("Int64")
    frame["first_order_days"] = _days_between(frame["first_order_at"], end).astype("Int64")
    with np.errstate(divide="ignore", invalid="ignore"):
        aov = frame["monetary_total"] / frame["orders_total"].replace(0, np.nan)
        change = frame["engagement_30d"] / frame["engagement_prev_30d"].replace(0, np.nan) - 1.0
    frame["avg_order_value"] = aov.round(2)
    frame["engagement_change"] = change.round(4)
    frame["days_to_birthday"] = days_to_birthday(frame["birthday"], raw.as_of)
    frame["member_tier"] = frame["member_tier"].astype("string")
    frame["timezone"] = frame["timezone"].astype("string")
    out = frame[list(FEATURE_COLUMNS) + list(CONTEXT_COLUMNS)].copy()
    out.index.name = "customer_id"
    return out


def _days_between(when: pd.Series, end: pd.Timestamp) -> pd.Series:
    """Whole days from `when` to the end of the as-of day, counting the as-of day itself as day 0."""
    delta = (end - pd.to_datetime(when)).dt.total_seconds() / 86400.0
    return np.floor(delta)


def days_to_birthday(birthdays: pd.Series, as_of: dt.date) -> pd.Series:
    """Days until the next birthday on or after as_of; 29 February counts as 28 February in other years."""
    out = pd.Series(pd.NA, index=birthdays.index, dtype="Int64")
    known = birthdays.dropna()
    if known.empty:
        return out
    born = pd.to_datetime(pd.Series(known.values, index=known.index))
    month, day = born.dt.month.to_numpy(), born.dt.day.to_numpy()

    def occurrence(year: int) -> pd.Series:
        leap = (year % 4 == 0 and year % 100 != 0) or year % 400 == 0
        d = np.where((month == 2) & (day == 29) & (not leap), 28, day)
        return pd.to_datetime(pd.DataFrame({"year": year, "month": month, "day": d}))

    today = pd.Timestamp(as_of)
    this_year = occurrence(as_of.year).to_numpy()
    next_year = occurrence(as_of.year + 1).to_numpy()
    nxt = np.where(this_year >= today.to_datetime64(), this_year, next_year)
    out.loc[known.index] = ((nxt - today.to_datetime64()) // np.timedelta64(1, "D")).astype("int64")
    return out


@task(name="features", cache_policy=NO_CACHE)
def features(raw: Extract) -> pd.DataFrame:
    return build_features(raw)
