"""The baseline for scale_bench.py: the churn win-back run's essential work as one plain pandas script.

    .venv/bin/python tests/benchmarks/scale_bare.py --db URL --as-of 2026-06-30 [--table bare_touches]

No Prefect, no playbook compiler, no lifecycle tasks: read the customers, the orders up to the as-of
day and the engagement events of the last 180 days with pandas.read_sql; compute the catalog's
features with groupby; LightGBM predict with the registered churn model (plus its BG/NBD prior and
calibration, as the model defines them); the audience and segments of playbooks/churn_winback.yaml
written out as pandas masks; one row per selected customer written to a scratch table. Prints one
JSON line: seconds per stage, rows, peak RSS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import sys
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models import bgnbd  # noqa: E402  (the model's own math, not the pipeline)
from models.calibration import Platt  # noqa: E402

ENGAGEMENT = ("app.visit", "product.view", "message.open", "message.click", "group.message")


def _stamp(s: pd.Series) -> pd.Series:
    """SQLite gives text, PostgreSQL datetimes: either way datetime64."""
    return pd.to_datetime(s, format="ISO8601") if s.dtype != "datetime64[ns]" else s


def read(conn, as_of: dt.date) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    end = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time())
    start = end - dt.timedelta(days=180)
    customers = pd.read_sql(text("SELECT customer_id, signed_up_at, timezone, member_tier, points, birthday, "
                                 "first_name, advisor_id FROM customers WHERE signed_up_at < :end"),
                            conn, params={"end": end})
    orders = pd.read_sql(text("SELECT customer_id, ordered_at, amount FROM orders WHERE ordered_at < :end"),
                         conn, params={"end": end})
    kinds = ", ".join(f"'{k}'" for k in ENGAGEMENT)
    events = pd.read_sql(text(f"SELECT customer_id, occurred_at, type FROM events WHERE occurred_at >= :start "
                              f"AND occurred_at < :end AND type IN ({kinds})"),
                         conn, params={"start": start, "end": end})
    customers["signed_up_at"] = _stamp(customers["signed_up_at"])
    customers["birthday"] = pd.to_datetime(customers["birthday"])
    orders["ordered_at"] = _stamp(orders["ordered_at"])
    orders["amount"] = orders["amount"].astype("float64")
    events["occurred_at"] = _stamp(events["occurred_at"])
    return customers, orders, events


def features(customers: pd.DataFrame, orders: pd.DataFrame, events: pd.DataFrame, as_of: dt.date) -> pd.DataFrame:
    """The catalog's feature columns, one groupby over orders and one over events."""
    end = pd.Timestamp(as_of + dt.timedelta(days=1))
    day = pd.Timedelta(days=1)
    o = orders.sort_values(["customer_id", "ordered_at"])
    age = end - o["ordered_at"]
    gap = o.groupby("customer_id")["ordered_at"].diff() / day
    amount = o["amount"]
    o = o.assign(o30=age <= 30 * day, o90=age <= 90 * day, o180=age <= 180 * day, o365=age <= 365 * day,
                 op90=(age > 90 * day) & (age <= 180 * day), m30=amount.where(age <= 30 * day, 0.0),
                 m90=amount.where(age <= 90 * day, 0.0), mp90=amount.where((age > 90 * day) & (age <= 180 * day), 0.0),
                 m365=amount.where(age <= 365 * day, 0.0), gap=gap, gap2=gap * gap)
    g = o.groupby("customer_id").agg(
        orders_total=("amount", "size"), monetary_total=("amount", "sum"), first=("ordered_at", "min"),
        last=("ordered_at", "max"), orders_30d=("o30", "sum"), orders_90d=("o90", "sum"),
        orders_prev_90d=("op90", "sum"), orders_180d=("o180", "sum"), orders_365d=("o365", "sum"),
        monetary_30d=("m30", "sum"), monetary_90d=("m90", "sum"), monetary_prev_90d=("mp90", "sum"),
        monetary_365d=("m365", "sum"), gap_sq=("gap2", "sum"), max_gap_days=("gap", "max"))
    eage = end - events["occurred_at"]
    recent, before = eage <= 30 * day, (eage > 30 * day) & (eage <= 60 * day)
    kind = events["type"]
    e = pd.DataFrame({"customer_id": events["customer_id"], "occurred_at": events["occurred_at"],
                      "visits_30d": recent & (kind == "app.visit"), "visits_prev_30d": before & (kind == "app.visit"),
                      "opens_30d": recent & (kind == "message.open"), "clicks_30d": recent & (kind == "message.click"),
                      "group_30d": recent & (kind == "group.message"), "engagement_30d": recent,
                      "engagement_prev_30d": before})
    eg = e.groupby("customer_id").agg(
        visits_30d=("visits_30d", "sum"), visits_prev_30d=("visits_prev_30d", "sum"), opens_30d=("opens_30d", "sum"),
        clicks_30d=("clicks_30d", "sum"), group_30d=("group_30d", "sum"), engagement_30d=("engagement_30d", "sum"),
        engagement_prev_30d=("engagement_prev_30d", "sum"), last_event=("occurred_at", "max"))
    f = customers.set_index("customer_id").join(g, how="left").join(eg, how="left")
    counts = ["orders_total", "orders_30d", "orders_90d", "orders_prev_90d", "orders_180d", "orders_365d",
              "visits_30d", "visits_prev_30d", "opens_30d", "clicks_30d", "group_30d", "engagement_30d",
              "engagement_prev_30d"]
    f[counts] = f[counts].fillna(0).astype("int64")
    money = ["monetary_total", "monetary_30d", "monetary_90d", "monetary_prev_90d", "monetary_365d"]
    f[money] = f[money].fillna(0.0).round(2)

    def days(s: pd.Series) -> pd.Series:
        return np.floor((end - s) / day)

    f["recency_days"], f["first_order_days"] = days(f["last"]), days(f["first"])
    n1 = (f["orders_total"] - 1).where(f["orders_total"] > 1)
    f["mean_gap_days"] = (f["last"] - f["first"]) / day / n1
    f["gap_std_days"] = np.sqrt((f["gap_sq"] / n1 - f["mean_gap_days"] ** 2).clip(lower=0))
    f["max_gap_days"] = f["max_gap_days"].where(n1.notna())
    f["recency_gap_ratio"] = f["recency_days"] / f["mean_gap_days"].where(f["mean_gap_days"] > 0)
    f["avg_order_value"] = (f["monetary_total"] / f["orders_total"].replace(0, np.nan)).round(2)
    f["orders_change_90d"] = (f["orders_90d"] / f["orders_prev_90d"].replace(0, np.nan) - 1).round(4)
    f["monetary_change_90d"] = (f["monetary_90d"] / f["monetary_prev_90d"].where(f["monetary_prev_90d"] > 0) - 1).round(4)
    f["engagement_change"] = (f["engagement_30d"] / f["engagement_prev_30d"].replace(0, np.nan) - 1).round(4)
    f["last_event_days"] = days(f["last_event"])
    f["tenure_days"] = days(f["signed_up_at"]).fillna(f["first_order_days"]).fillna(0).astype("int64")
    f["points"] = f["points"].fillna(0).astype("int64")
    born = f["birthday"]
    today = pd.Timestamp(as_of)
    this = pd.to_datetime({"year": as_of.year, "month": born.dt.month,
                           "day": born.dt.day.where(~((born.dt.month == 2) & (born.dt.day == 29)), 28)}, errors="coerce")
    nxt = this.where(this >= today, this + pd.DateOffset(years=1))
    f["days_to_birthday"] = ((nxt - today) / day).astype("Int64")
    return f.drop(columns=["first", "last", "gap_sq", "last_event", "signed_up_at", "birthday"])


def predict(f: pd.DataFrame, record: dict) -> pd.Series:
    """Calibrated churn probability for the customers with an order: the registered model's recipe."""
    meta = json.loads(record["meta"])
    booster = lgb.Booster(model_str=record["booster"])
    names = meta["feature_names"]
    buyers = f[f["orders_total"] > 0]
    params = bgnbd.BGNBD(**meta["bgnbd"])
    x, t_x, T = bgnbd.rfm(buyers)
    horizon = int(record["horizon_days"])
    derived = {"bgnbd_p_alive": params.p_alive(x, t_x, T),
               "bgnbd_p_no_order": params.p_no_purchase(x, t_x, T, horizon),
               "bgnbd_expected_orders": params.expected_purchases(x, t_x, T, horizon)}
    matrix = np.column_stack([derived[n] if n in derived else buyers[n].to_numpy(dtype="float64", na_value=np.nan)
                              for n in names])
    prior = np.clip(derived["bgnbd_p_no_order"], 1e-4, 1 - 1e-4)
    z = booster.predict(matrix, raw_score=True) + (np.log(prior) - np.log1p(-prior))
    p = Platt.from_dict(meta["calibration"]).apply(1.0 / (1.0 + np.exp(-z)))
    return pd.Series(np.round(p, 4), index=buyers.index)


def segment(f: pd.DataFrame) -> pd.DataFrame:
    """playbooks/churn_winback.yaml's audience and segments, first match wins."""
    audience = f[(f["orders_total"] >= 1) & (f["recency_days"] <= 365) & (f["recency_days"] >= 14)]
    s, m = audience["churn_score"], audience["monetary_365d"]
    label = np.select([(s >= 0.6) & (m >= 1500), (s >= 0.6) & (m >= 300), s >= 0.7],
                      ["high_value", "mid_value", "low_value"], default="")
    return audience.assign(segment=label)[label != ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--as-of", type=dt.date.fromisoformat, required=True)
    parser.add_argument("--table", default="bare_touches")
    args = parser.parse_args(argv)

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(now - clock, 2)
        clock = now

    engine = create_engine(args.db)
    with engine.connect() as conn:
        record = dict(conn.execute(text("SELECT booster, meta, horizon_days FROM model_registry "
                                        "ORDER BY created_at DESC LIMIT 1")).mappings().one())
        customers, orders, events = read(conn, args.as_of)
    lap("read")
    f = features(customers, orders, events, args.as_of)
    del customers, orders, events
    lap("features")
    f["churn_score"] = predict(f, record)
    lap("predict")
    selected = segment(f)
    lap("segment")
    rows = pd.DataFrame({"customer_id": selected.index, "segment": selected["segment"].to_numpy(),
                         "score": selected["churn_score"].to_numpy(dtype="float64"), "as_of": args.as_of})
    with engine.begin() as conn:
        rows.to_sql(args.table, conn, if_exists="replace", index=False, chunksize=20_000)
    lap("write")
    print(json.dumps({
        "seconds": seconds, "customers": int(len(f)),
        "audience": int(((f["orders_total"] >= 1) & (f["recency_days"] <= 365) & (f["recency_days"] >= 14)).sum()),
        "segments": {k: int(v) for k, v in selected["segment"].value_counts().sort_index().items()},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
