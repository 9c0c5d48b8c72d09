"""How long a demo world takes to generate and load, with pandas.to_sql as a baseline in the same run.

    .venv/bin/python tests/benchmarks/generate_bench.py [--customers 100000] [--db URL]

Writes into fresh temporary SQLite files unless --db names an (empty) warehouse. The orders table is
loaded a second time both as write_world loads it (bulk_load) and with DataFrame.to_sql, into
identical empty SQLite warehouses, so the ratio compares loaders, not machines.
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

from infra.demoworld import generate_world, write_world  # noqa: E402
from infra.warehouse.bulk import bulk_load  # noqa: E402
from infra.warehouse import schema  # noqa: E402
from infra.warehouse.db import display_url, open_warehouse, upgrade  # noqa: E402

TO_SQL_CHUNK = 10_000


def _fresh(folder: Path, name: str):
    engine = open_warehouse(f"sqlite:///{folder / name}", create=True)
    upgrade(engine)
    return engine


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--end", type=dt.date.fromisoformat, default=dt.date(2026, 11, 30))
    parser.add_argument("--db", help="write the world to this (empty) warehouse, not a temporary SQLite file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="lifecycle-bench-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        world = generate_world(args.customers, days=args.days, seed=args.seed, end=args.end)
        generate_s = time.perf_counter() - started

        engine = open_warehouse(args.db, create=True) if args.db else _fresh(folder, "world.db")
        started = time.perf_counter()
        counts = write_world(engine, world)
        write_s = time.perf_counter() - started
        target = display_url(str(engine.url))
        engine.dispose()

        # the same orders frame, once per loader, into identical empty SQLite warehouses
        bulk_engine = _fresh(folder, "bulk.db")
        started = time.perf_counter()
        with bulk_engine.begin() as conn:
            bulk_load(conn, schema.orders, world.orders)
        bulk_s = time.perf_counter() - started
        pandas_engine = _fresh(folder, "pandas.db")
        started = time.perf_counter()
        with pandas_engine.begin() as conn:
            world.orders.to_sql("orders", conn, if_exists="append", index=False, method=None,
                                chunksize=TO_SQL_CHUNK)
        pandas_s = time.perf_counter() - started
        bulk_engine.dispose()
        pandas_engine.dispose()

    rows = sum(counts.values())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"world: {args.customers} customers, {args.days} days, seed {args.seed}, end {args.end}")
    print("rows: " + ", ".join(f"{name} {n}" for name, n in counts.items()) + f" (total {rows})")
    print(f"generate: {generate_s:.1f}s ({rows / generate_s:,.0f} rows/s)")
    print(f"write ({target}): {write_s:.1f}s ({rows / write_s:,.0f} rows/s)")
    print(f"generate + write: {generate_s + write_s:.1f}s")
    ratio = bulk_s / pandas_s
    print(f"orders write: bulk {bulk_s:.2f}s vs pandas.to_sql {pandas_s:.2f}s (ratio {ratio:.2f})")
    print(f"peak RSS: {peak_mb:,.0f} MiB")


if __name__ == "__main__":
    main()
