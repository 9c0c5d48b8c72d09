"""Churn model quality: the backtest on a demo world or any orders CSV, and LightGBM's gap to the baselines.

    .venv/bin/python tests/benchmarks/churn_quality_bench.py [--customers 50000] [--db URL]
    .venv/bin/python tests/benchmarks/churn_quality_bench.py --orders FILE.csv [--events FILE.csv]

Three cutoffs a month apart (each model trained on data up to its cutoff only); every model is
scored on the same customers. Gaps are LightGBM minus baseline, pooled over the cutoffs, with 95%
bootstrap intervals (resampling customer-cutoffs). Positive AUC gaps and negative log-loss gaps
mean LightGBM is better. The HTML report and charts go to --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from infra.warehouse import csvimport  # noqa: E402
from infra.warehouse.db import open_warehouse, upgrade  # noqa: E402
from models import backtest, report  # noqa: E402
from models.metrics import log_loss, roc_auc  # noqa: E402
from tasks.source import FrameSource  # noqa: E402

END = dt.date(2026, 6, 30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--db", help="a generated warehouse to reuse instead of generating one")
    parser.add_argument("--orders", help="an orders CSV (customer_id, ordered_at, amount) instead of a demo world")
    parser.add_argument("--events", help="with --orders: an events CSV")
    parser.add_argument("--orders-only", action="store_true", help="demo world: use its orders alone")
    parser.add_argument("--horizon-days", type=int, default=90)
    parser.add_argument("--out", default="churn-backtest", help="folder for the report (default ./churn-backtest)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="lifecycle-bench-") as tmp:
        if args.orders:
            source = FrameSource(csvimport.read("orders", args.orders),
                                 events=csvimport.read("events", args.events) if args.events else None,
                                 name=args.orders)
            label = f"orders CSV {args.orders}"
        else:
            url = args.db
            if not url:
                from infra.demoworld import generate_world, write_world

                url = f"sqlite:///{Path(tmp) / 'world.db'}"
                engine = open_warehouse(url, create=True)
                upgrade(engine)
                write_world(engine, generate_world(args.customers, days=730, seed=args.seed, end=END))
            source = FrameSource.from_warehouse(open_warehouse(url))
            label = f"demo world ({len(source.customers):,} customers)"
            if args.orders_only:
                source = FrameSource(source.orders, name="demo world orders only")
                label += ", orders only"
        cutoffs = backtest.default_cutoffs(source.last_order_day(), args.horizon_days)
        started = time.perf_counter()
        bt = backtest.run(source, cutoffs, args.horizon_days)
        took = time.perf_counter() - started
        paths = report.write(bt, args.out, title=f"Churn backtest: {label}")

    print(f"data: {label}; cutoffs {', '.join(c.isoformat() for c in cutoffs)}; horizon {args.horizon_days} days")
    print(f"scored: {len(bt.predictions):,} customer-cutoffs, churn rate {bt.predictions['label'].mean():.1%}; "
          f"backtest {took:.0f}s")
    print(f"{'model':<10}" + "".join(f"{k:>18}" for k in report.METRICS))
    for m in backtest.MODELS:
        print(f"{m:<10}" + "".join(f"{bt.pooled[m][k]:>18.4f}" for k in report.METRICS))
    for base in ("recency", "bgnbd"):
        for name, metric in (("AUC", roc_auc), ("log-loss", log_loss)):
            point, lo, hi = backtest.bootstrap_gap(bt.predictions, metric, "lightgbm", base)
            better = (lo > 0) if name == "AUC" else (hi < 0)
            print(f"lightgbm - {base:<8} {name:<9} {point:+.4f}  95% CI [{lo:+.4f}, {hi:+.4f}]"
                  f"  {'lightgbm better' if better else 'NOT significantly better'}")
    print(f"report: {paths['html']}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
