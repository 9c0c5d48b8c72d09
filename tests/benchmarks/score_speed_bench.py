"""Scoring speed: features + predict for every customer, vs a bare pandas groupby of the same features
plus LightGBM's predict, measured in the same run on the same in-memory data.

    .venv/bin/python tests/benchmarks/score_speed_bench.py [--customers 1000000] [--db sqlite:///world.db]

Without --db a world is generated into a temporary SQLite file (about 2 minutes for 1M customers);
pass --keep PATH to write it there and reuse it later with --db. The model is trained on the
world's first 100,000 customers (training speed is not what this measures).
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from flows.training import fit_at  # noqa: E402
from infra.warehouse.db import open_warehouse, upgrade  # noqa: E402
from models import bgnbd  # noqa: E402
from models.churn import tree_probability  # noqa: E402
from tasks.features import build_features  # noqa: E402
from tasks.source import FrameSource  # noqa: E402

END = dt.date(2026, 6, 30)


def bare_features(orders: pd.DataFrame, events: pd.DataFrame, customers: pd.DataFrame, as_of: dt.date,
                  names: tuple[str, ...], params: bgnbd.BGNBD, horizon: int) -> np.ndarray:
    """The same model inputs written as plain pandas: one groupby over orders, one over events."""
    end = pd.Timestamp(as_of + dt.timedelta(days=1))
    o = orders[orders["ordered_at"] < end].sort_values(["customer_id", "ordered_at"])
    age = (end - o["ordered_at"]).dt.total_seconds() / 86400
    gap = o.groupby("customer_id")["ordered_at"].diff().dt.total_seconds() / 86400
    o = o.assign(
        o30=age <= 30, o90=age <= 90, o180=age <= 180, o365=age <= 365, op90=(age > 90) & (age <= 180),
        m30=o["amount"].where(age <= 30, 0), m90=o["amount"].where(age <= 90, 0),
        mp90=o["amount"].where((age > 90) & (age <= 180), 0), m365=o["amount"].where(age <= 365, 0),
        gap=gap, gap2=gap**2)
    g = o.groupby("customer_id").agg(
        orders_total=("amount", "size"), monetary_total=("amount", "sum"), first=("ordered_at", "min"),
        last=("ordered_at", "max"), orders_30d=("o30", "sum"), orders_90d=("o90", "sum"),
        orders_180d=("o180", "sum"), orders_365d=("o365", "sum"), orders_prev_90d=("op90", "sum"),
        monetary_30d=("m30", "sum"), monetary_90d=("m90", "sum"), monetary_prev_90d=("mp90", "sum"),
        monetary_365d=("m365", "sum"), gap_sq=("gap2", "sum"), max_gap_days=("gap", "max"))
    e = events[(events["occurred_at"] < end) & (events["occurred_at"] >= end - pd.Timedelta(days=180))]
    eage = (end - e["occurred_at"]).dt.total_seconds() / 86400
    e = e.assign(r=eage <= 30, b=(eage > 30) & (eage <= 60), v=e["type"] == "app.visit")
    e = e.assign(v30=e["r"] & e["v"], vp=e["b"] & e["v"], op=e["r"] & (e["type"] == "message.open"),
                 cl=e["r"] & (e["type"] == "message.click"), gr=e["r"] & (e["type"] == "group.message"))
    eg = e.groupby("customer_id").agg(visits_30d=("v30", "sum"), visits_prev_30d=("vp", "sum"),
                                      opens_30d=("op", "sum"), clicks_30d=("cl", "sum"), group_30d=("gr", "sum"),
                                      engagement_30d=("r", "sum"), engagement_prev_30d=("b", "sum"),
                                      last_event=("occurred_at", "max"))
    f = g.join(eg, how="left").join(customers.set_index("customer_id")[["signed_up_at"]], how="left")
    days = lambda s: np.floor((end - s).dt.total_seconds() / 86400)  # noqa: E731
    f["recency_days"], f["first_order_days"] = days(f["last"]), days(f["first"])
    n1 = (f["orders_total"] - 1).where(f["orders_total"] > 1)
    f["mean_gap_days"] = (f["last"] - f["first"]).dt.total_seconds() / 86400 / n1
    f["gap_std_days"] = np.sqrt((f["gap_sq"] / n1 - f["mean_gap_days"] ** 2).clip(lower=0))
    f["recency_gap_ratio"] = f["recency_days"] / f["mean_gap_days"].where(f["mean_gap_days"] > 0)
    f["avg_order_value"] = f["monetary_total"] / f["orders_total"]
    f["orders_change_90d"] = f["orders_90d"] / f["orders_prev_90d"].replace(0, np.nan) - 1
    f["monetary_change_90d"] = f["monetary_90d"] / f["monetary_prev_90d"].where(f["monetary_prev_90d"] > 0) - 1
    f["engagement_change"] = f["engagement_30d"] / f["engagement_prev_30d"].replace(0, np.nan) - 1
    f["last_event_days"] = days(f["last_event"])
    f["tenure_days"] = days(f["signed_up_at"])
    x, t_x, T = bgnbd.rfm(f)
    f["bgnbd_p_alive"] = params.p_alive(x, t_x, T)
    f["bgnbd_p_no_order"] = params.p_no_purchase(x, t_x, T, horizon)
    f["bgnbd_expected_orders"] = params.expected_purchases(x, t_x, T, horizon)
    return f[list(names)].to_numpy(dtype="float64", na_value=np.nan)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--db", help="an existing generated warehouse to reuse")
    parser.add_argument("--keep", help="with no --db: generate the world into this SQLite file and keep it")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="lifecycle-bench-") as tmp:
        url = args.db
        if not url:
            from infra.demoworld import generate_world, write_world

            url = f"sqlite:///{args.keep or Path(tmp) / 'world.db'}"
            engine = open_warehouse(url, create=True)
            upgrade(engine)
            started = time.perf_counter()
            write_world(engine, generate_world(args.customers, days=730, seed=1, end=END))
            print(f"world: {args.customers:,} customers generated and written in {time.perf_counter() - started:.0f} s")
        engine = open_warehouse(url)
        started = time.perf_counter()
        frames = FrameSource.from_warehouse(engine)
        print(f"load: {len(frames.orders):,} orders, {0 if frames.events is None else len(frames.events):,} events, "
              f"{len(frames.customers):,} customers read in {time.perf_counter() - started:.0f} s")
        sample = set(frames.customers["customer_id"].iloc[:100_000])
        small = FrameSource(frames.orders[frames.orders["customer_id"].isin(sample)],
                            frames.customers[frames.customers["customer_id"].isin(sample)],
                            frames.events[frames.events["customer_id"].isin(sample)])
        model = fit_at(small, END, 90)
        print(f"model: {model.version}, {len(model.feature_names)} inputs, {model.booster.current_iteration()} trees")

        runs = {"lifecycle": [], "bare": []}
        for _ in range(2):
            started = time.perf_counter()
            source = FrameSource(frames.orders, frames.customers, frames.events)  # sorting/encoding counts
            feats = build_features(source.extract(END))
            buyers = feats[feats["orders_total"] > 0]
            ours = model.predict(buyers)
            runs["lifecycle"].append(time.perf_counter() - started)

            started = time.perf_counter()
            matrix = bare_features(frames.orders, frames.events, frames.customers, END, model.feature_names,
                                   model.bgnbd, 90)
            bare = model.calibration.apply(tree_probability(model.booster, matrix, model.feature_names,
                                                                  from_prior="prior_mean" in model.meta))
            runs["bare"].append(time.perf_counter() - started)
        assert len(bare) == len(ours), (len(bare), len(ours))
        agree = np.corrcoef(np.sort(bare), np.sort(ours.to_numpy()))[0, 1]

    ours_s, bare_s = min(runs["lifecycle"]), min(runs["bare"])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"scored: {len(ours):,} customers with orders ({len(feats):,} customers in all)")
    print(f"features + predict: lifecycle {ours_s:.1f}s vs bare pandas groupby + predict {bare_s:.1f}s "
          f"(ratio {ours_s / bare_s:.2f}; target <= 1.5); best of 2; score distributions agree (r={agree:.4f})")
    print(f"peak RSS: {peak_mb:,.0f} MiB")


if __name__ == "__main__":
    main()
