"""A million customers: `lifecycle run` of the churn win-back playbook vs a bare pandas script, same warehouse.

    .venv/bin/python tests/benchmarks/scale_bench.py --db sqlite:////work/scale/world1m.db
    .venv/bin/python tests/benchmarks/scale_bench.py --db postgresql://postgres@127.0.0.1:5432/lc_scale
    .venv/bin/python tests/benchmarks/scale_bench.py --db URL --all-playbooks   # memory across playbooks
    .venv/bin/python tests/benchmarks/scale_bench.py --db URL --incremental     # and the next day's run

An empty warehouse is filled first (`lifecycle data generate --customers N`, timed, peak RSS shown)
and, without a registered model, one is trained on the first 100,000 customers (not timed). Then, on
the same warehouse, alternately:
  (a) `lifecycle run playbooks/churn_winback.yaml --as-of END` as a subprocess, against a Prefect
      server this benchmark starts (as in production; `--ephemeral` measures Prefect's ephemeral
      mode instead); its stage times come from the Prefect API's task runs;
  (b) tests/benchmarks/scale_bare.py: read orders and events with pandas, the same features by
      groupby, LightGBM predict, the playbook's segments as pandas masks, one row per selected touch.
Each run's ledger rows (touches, journeys) are deleted before the next, so every (a) does the same
work. Prints each stage's time, the ratio a/b (best of --rounds) and each side's peak RSS
(os.wait4 of the child), and checks both selected the same customers per segment. The trees are
compiled once before timing (models/compiled.py; like training, once per model and machine).

With --incremental, then: the playbook runs on as_of (its customers enter journeys), the feature state
is kept, --changed (1%) of the customers get orders or events dated as_of + 1, and that day's run is
timed from scratch (f) and from the kept state (i); the two ledgers must be identical. Rows added are
removed afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
PYTHON = sys.executable
LIFECYCLE = str(Path(sys.executable).with_name("lifecycle"))
END = dt.date(2026, 6, 30)
PLAYBOOK = REPO / "playbooks" / "churn_winback.yaml"
TRAIN_CUSTOMERS = 100_000


def timed_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run a command; (wall seconds, that process's own peak RSS in MiB via os.wait4, its stdout)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss / 1024, stdout


def customer_count(url: str) -> int:
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url)
    try:
        if "customers" not in inspect(engine).get_table_names():
            return 0
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM customers")).scalar_one())
    finally:
        engine.dispose()


def ensure_model(url: str, as_of: dt.date) -> str:
    """The registered churn model; trains one on the first 100,000 customers when there is none."""
    from sqlalchemy import text

    from flows.training import fit_at
    from infra.warehouse.db import open_warehouse
    from models import registry
    from tasks.extract import Shard
    from tasks.source import SqlSource

    engine = open_warehouse(url)
    model = registry.latest(engine)
    if model is None:
        with engine.connect() as conn:
            hi = conn.execute(text("SELECT customer_id FROM customers ORDER BY customer_id LIMIT 1 OFFSET :n"),
                              {"n": TRAIN_CUSTOMERS}).scalar()
        started = time.perf_counter()
        model = fit_at(SqlSource(engine, shard=Shard(hi=hi)), as_of, 90)
        registry.save(engine, model)
        print(f"model: trained {model.version} on the first {TRAIN_CUSTOMERS:,} customers in "
              f"{time.perf_counter() - started:.0f} s (not part of the comparison)")
    engine.dispose()
    return model.version


def reset(url: str, playbook: str, as_of: dt.date) -> None:
    """Forget what the previous round wrote, so each round does the same work.

    On PostgreSQL the deleted rows are vacuumed away at once: left to autovacuum (which may not have
    come round yet), millions of dead ledger rows from earlier rounds slow the next round's inserts.
    """
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url)
    tables = set(inspect(engine).get_table_names())
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM touches WHERE playbook = :p AND as_of = :d"), {"p": playbook, "d": as_of})
        if "journeys" in tables:
            conn.execute(text("DELETE FROM journeys WHERE playbook = :p AND entered_on = :d"),
                         {"p": playbook, "d": as_of})
        if "bare_touches" in tables:
            conn.execute(text("DROP TABLE bare_touches"))
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE touches" + (", journeys" if "journeys" in tables else ""))
    engine.dispose()


def ledger_segments(url: str, playbook: str, as_of: dt.date) -> tuple[dict[str, int], str | None]:
    """Selected customers per segment as the run's ledger recorded them, and the run's flow-run id."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT segment, count(*) FROM touches WHERE playbook = :p AND as_of = :d "
                                 "GROUP BY segment ORDER BY segment"), {"p": playbook, "d": as_of}).all()
        run_id = conn.execute(text("SELECT max(run_id) FROM touches WHERE playbook = :p AND as_of = :d"),
                              {"p": playbook, "d": as_of}).scalar()
    engine.dispose()
    return {str(s): int(n) for s, n in rows}, run_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_prefect(home: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """A Prefect server for the runs to report to, as a deployment has (its start-up is not timed)."""
    import httpx

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server_env = {**env, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([str(Path(PYTHON).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=server_env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return proc, api
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(1)
    proc.terminate()
    raise SystemExit(f"the Prefect server did not start; see {home / 'server.log'}")


def stage_times(api: str, flow_run_id: str) -> dict[str, float]:
    """Seconds per task of one flow run, from the Prefect API (task runs of one name are summed)."""
    import httpx

    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200}
    runs = httpx.post(f"{api}/task_runs/filter", json=body, timeout=30).json()
    out: dict[str, float] = {}
    for r in sorted(runs, key=lambda r: r.get("start_time") or ""):
        name = r["name"].rsplit("-", 1)[0]
        out[name] = round(out.get(name, 0.0) + float(r.get("total_run_time") or 0.0), 2)
    flow = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=30).json()
    out["(flow run)"] = round(float(flow.get("total_run_time") or 0.0), 2)
    return out


def ledger_rows(url: str, playbook: str, as_of: dt.date) -> list[tuple]:
    """Every decision a run recorded (not its run id or timestamps), to compare two runs of one day."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT touch_key, customer_id, segment, tier, channel, variant, status, payload, cost, due_at "
            "FROM touches WHERE playbook = :p AND as_of = :d ORDER BY touch_key"), {"p": playbook, "d": as_of}).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def inject_day(url: str, day: dt.date, share: float, seed: int = 11) -> int:
    """New activity dated `day` for a random `share` of customers: app visits and product views for
    all of them, an order for about a third. The world must end before `day`; returns customers changed."""
    import numpy as np
    import pandas as pd
    from sqlalchemy import create_engine, func, select

    from infra.warehouse.bulk import bulk_insert
    from infra.warehouse.schema import customers, events, orders

    engine = create_engine(url)
    start = dt.datetime.combine(day, dt.time())
    with engine.begin() as conn:
        later = conn.execute(select(func.count()).select_from(orders).where(orders.c.ordered_at >= start)).scalar_one()
        if later:
            raise SystemExit(f"the warehouse already has orders on or after {day}: pass --as-of the last day of data")
        ids = pd.Series(conn.execute(select(customers.c.customer_id).order_by(customers.c.customer_id)).scalars().all())
        rng = np.random.default_rng(seed)
        chosen = ids.sample(frac=share, random_state=seed).sort_values().to_numpy()
        n_events = rng.integers(1, 6, len(chosen))
        who = np.repeat(chosen, n_events)
        at = start + pd.to_timedelta(rng.integers(8 * 3600, 23 * 3600, len(who)), unit="s")
        bulk_insert(conn, events, pd.DataFrame({"customer_id": who, "occurred_at": at,
                                                "type": rng.choice(["app.visit", "product.view"], len(who)),
                                                "channel": "app"}))
        buyers = chosen[rng.random(len(chosen)) < 0.35]
        bulk_insert(conn, orders, pd.DataFrame({
            "order_id": [f"BENCH-{day:%Y%m%d}-{i}" for i in range(len(buyers))], "customer_id": buyers,
            "ordered_at": start + pd.to_timedelta(rng.integers(9 * 3600, 22 * 3600, len(buyers)), unit="s"),
            "amount": np.round(rng.lognormal(5.3, 0.6, len(buyers)), 2), "channel": "app", "category": "apparel",
            "items": 1}))
    engine.dispose()
    return len(chosen)


def forget_day(url: str, day: dt.date) -> None:
    """Remove what inject_day wrote and the runs of `day`, so the warehouse is as generated."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    start = dt.datetime.combine(day, dt.time())
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM events WHERE occurred_at >= :s"), {"s": start})
        conn.execute(text("DELETE FROM orders WHERE ordered_at >= :s"), {"s": start})
        conn.execute(text("DELETE FROM feature_watermark"))
    engine.dispose()
    reset(url, PLAYBOOK.stem, day)


def incremental_round(args, env: dict[str, str], server: bool) -> dict:
    """The next day, after a day's run: `--changed` of the customers get new orders or events dated
    as_of + 1; that day's run is timed twice, computing every feature from scratch (f) and from the
    feature state kept on as_of (i), and the two ledgers must be identical."""
    day = args.as_of + dt.timedelta(days=1)
    forget_day(args.db, day)
    run = [LIFECYCLE, "run", str(PLAYBOOK), "--db", args.db]
    timed_child(run + ["--as-of", args.as_of.isoformat()], env)  # yesterday's run: its customers are in journeys
    timed_child([PYTHON, __file__, "--db", args.db, "--as-of", args.as_of.isoformat(), "--state-child"], env)
    changed = inject_day(args.db, day, args.changed)
    out = {"changed": changed}
    try:
        for name, extra in (("f", {}), ("i", {"LIFECYCLE_INCREMENTAL_FEATURES": "1"})):  # f: env's "0"
            reset(args.db, PLAYBOOK.stem, day)
            wall, peak, _ = timed_child(run + ["--as-of", day.isoformat()], {**env, **extra})
            _, run_id = ledger_segments(args.db, PLAYBOOK.stem, day)
            out[name] = {"wall": wall, "peak": peak, "ledger": ledger_rows(args.db, PLAYBOOK.stem, day),
                         "stages": stage_times(env["PREFECT_API_URL"], run_id) if server and run_id else {}}
    finally:
        forget_day(args.db, day)
        reset(args.db, PLAYBOOK.stem, args.as_of)
    return out


def demo_child(url: str, as_of: dt.date) -> None:
    """Every shipped playbook in one process, as `lifecycle demo` runs them; RSS after each."""
    from flows.build import run_plan
    from flows.commands import shipped_playbooks
    from flows.compiler import compile_file
    from infra.settings import load_config
    from models import registry
    from tasks.common import warehouse

    os.environ["LIFECYCLE_DB_URL"] = url
    config = load_config()
    model = registry.latest(warehouse())
    plans = [(compile_file(p, config), p) for p in shipped_playbooks()]
    for plan, path in sorted(plans, key=lambda pp: (-pp[0].guardrails.priority, pp[0].name)):
        started = time.perf_counter()
        run_plan(plan, str(path), as_of, dry_run=False, model_version=model.version if plan.model else None)
        status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("VmRSS", "VmHWM")))
        print(json.dumps({"playbook": plan.name, "seconds": round(time.perf_counter() - started, 1),
                          "rss_mib": int(status["VmRSS"].split()[0]) // 1024,
                          "peak_mib": int(status["VmHWM"].split()[0]) // 1024}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="the warehouse; generated first when it has no customers")
    parser.add_argument("--customers", type=int, default=1_000_000, help="world size when generating")
    parser.add_argument("--as-of", type=dt.date.fromisoformat, default=END)
    parser.add_argument("--rounds", type=int, default=1, help="alternate (a) and (b) this many times; best of each")
    parser.add_argument("--ephemeral", action="store_true", help="run (a) in Prefect's ephemeral mode")
    parser.add_argument("--all-playbooks", action="store_true",
                        help="instead: run every shipped playbook in one process and print RSS after each")
    parser.add_argument("--incremental", action="store_true",
                        help="also time the next day's run, from scratch and from the feature state kept the day before")
    parser.add_argument("--changed", type=float, default=0.01,
                        help="with --incremental: share of customers with new activity on the next day (default 0.01)")
    parser.add_argument("--demo-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--state-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compile-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.demo_child:
        demo_child(args.db, args.as_of)
        return
    if args.compile_child:  # into this LIFECYCLE_HOME, as the first scoring on a machine would
        from infra.warehouse.db import open_warehouse
        from models import compiled, registry

        model = registry.latest(open_warehouse(args.db))
        started = time.perf_counter()
        ok = compiled._build(model.booster_text, compiled.cache_key(model.booster_text)) is not None
        print(f"trees: {'compiled' if ok else 'NOT compiled (lleaves missing or failing): LightGBM scores'} "
              f"in {time.perf_counter() - started:.0f} s, once per model and machine (not part of the comparison)")
        return
    if args.state_child:
        from sqlalchemy import delete

        from infra.warehouse.db import open_warehouse
        from infra.warehouse.schema import feature_watermark
        from tasks.incremental import extract_incremental

        engine = open_warehouse(args.db)
        with engine.begin() as conn:  # start over: a full extract as of the day before, kept
            conn.execute(delete(feature_watermark))
        print(extract_incremental(engine, args.as_of)[1])
        return

    home = Path(tempfile.mkdtemp(prefix="lifecycle-scale-"))
    # every run aggregates all rows (a full run) unless the incremental round says otherwise
    env = {**os.environ, "LIFECYCLE_HOME": str(home / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "LIFECYCLE_INCREMENTAL_FEATURES": "0",
           "DO_NOT_TRACK": "1"}
    env.pop("LIFECYCLE_DB_URL", None)
    env.pop("PREFECT_API_URL", None)

    n = customer_count(args.db)
    if n == 0:
        wall, peak, out = timed_child([LIFECYCLE, "data", "generate", "--customers", str(args.customers),
                                       "--seed", "1", "--end", args.as_of.isoformat(), "--db", args.db], env)
        print(out.strip().splitlines()[-1])
        print(f"generate: {args.customers:,} customers in {wall:.0f} s, peak RSS {peak:,.0f} MiB")
        n = customer_count(args.db)
    version = ensure_model(args.db, args.as_of)

    print(timed_child([PYTHON, __file__, "--db", args.db, "--compile-child"], env)[2].strip())
    server = None
    if not args.ephemeral:
        (home / "prefect").mkdir(parents=True, exist_ok=True)
        server, api = start_prefect(home / "prefect", env)
        env["PREFECT_API_URL"] = api
    try:
        if args.all_playbooks:
            reset_all = [PLAYBOOK.stem, "birthday_care", "dormant_wakeup", "keep_tier_reminder",
                         "new_customer_onboarding"]
            for name in reset_all:
                reset(args.db, name, args.as_of)
            wall, peak, out = timed_child([PYTHON, __file__, "--db", args.db, "--as-of", args.as_of.isoformat(),
                                           "--demo-child"], env)
            print(f"every shipped playbook in one process ({n:,} customers, model {version}):")
            for line in out.splitlines():
                r = json.loads(line)
                print(f"  {r['playbook']:<26} {r['seconds']:>7.1f} s   RSS after {r['rss_mib']:>6,} MiB   "
                      f"peak so far {r['peak_mib']:>6,} MiB")
            print(f"  total {wall:.0f} s, peak RSS {peak:,.0f} MiB")
            return
        results = {"a": [], "b": []}
        for _ in range(args.rounds):
            reset(args.db, PLAYBOOK.stem, args.as_of)
            wall, peak, out = timed_child([LIFECYCLE, "run", str(PLAYBOOK), "--db", args.db,
                                           "--as-of", args.as_of.isoformat()], env)
            segments, run_id = ledger_segments(args.db, PLAYBOOK.stem, args.as_of)
            stages = stage_times(env["PREFECT_API_URL"], run_id) if server and run_id else {}
            results["a"].append({"wall": wall, "peak": peak, "stages": stages, "segments": segments})
            wall, peak, out = timed_child([PYTHON, str(REPO / "tests" / "benchmarks" / "scale_bare.py"),
                                           "--db", args.db, "--as-of", args.as_of.isoformat()], env)
            bare = json.loads(out.strip().splitlines()[-1])
            results["b"].append({"wall": wall, "peak": peak, "stages": bare["seconds"],
                                 "segments": bare["segments"]})
        reset(args.db, PLAYBOOK.stem, args.as_of)
        if args.incremental:
            results["i"] = incremental_round(args, env, bool(server))
    finally:
        if server:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)  # outbox files and the Prefect database of these runs

    a = min(results["a"], key=lambda r: r["wall"])
    b = min(results["b"], key=lambda r: r["wall"])
    backend = args.db.split(":", 1)[0]
    print(f"warehouse: {backend}, {n:,} customers, as of {args.as_of}, model {version}, "
          f"Prefect {'ephemeral' if args.ephemeral else 'server'}; best of {args.rounds}")
    print(f"(a) lifecycle run {PLAYBOOK.name}: {a['wall']:.1f} s, peak RSS {a['peak']:,.0f} MiB")
    if a["stages"]:
        stages = dict(a["stages"])
        flow = stages.pop("(flow run)")
        inside = sum(stages.values())
        print("    tasks: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
        print(f"    in the flow run between tasks (flow body, Prefect task-run bookkeeping) {flow - inside:.1f}; "
              f"outside the flow run (imports, CLI checks, flow-run creation, exit) {a['wall'] - flow:.1f}")
    print(f"(b) bare pandas script: {b['wall']:.1f} s, peak RSS {b['peak']:,.0f} MiB")
    print("    " + ", ".join(f"{k} {v:.1f}" for k, v in b["stages"].items())
          + f"; start-up {b['wall'] - sum(b['stages'].values()):.1f}")
    same = a["segments"] == b["segments"]
    print(f"selected per segment: lifecycle {a['segments']}, bare {b['segments']}"
          f" ({'identical' if same else 'DIFFERENT'})")
    print(f"ratio a/b: {a['wall'] / b['wall']:.2f} (goal <= 1.2); peak RSS lifecycle {a['peak'] / 1024:.2f} GiB "
          f"(goal <= 4), bare {b['peak'] / 1024:.2f} GiB")
    if "i" in results:
        r = results["i"]
        f, i = r["f"], r["i"]
        day = args.as_of + dt.timedelta(days=1)
        print(f"(i) the next day, {day}, after {args.as_of}'s run: {r['changed']:,} customers ({r['changed'] / n:.1%}) "
              f"had new orders or events")
        for key, label in (("f", "every feature from scratch"), ("i", "from the kept feature state")):
            x = r[key]
            print(f"    {label}: {x['wall']:.1f} s, peak RSS {x['peak']:,.0f} MiB, {len(x['ledger']):,} touches")
            if x["stages"]:
                print("      tasks: " + ", ".join(f"{k} {v:.1f}" for k, v in x["stages"].items() if k != "(flow run)"))
        print(f"    incremental / from scratch, same day: {i['wall'] / f['wall']:.2f}; incremental / the full run (a): "
              f"{i['wall'] / a['wall']:.2f} (goal <= 0.25); ledgers identical: {i['ledger'] == f['ledger']}")
        if i["ledger"] != f["ledger"]:
            raise SystemExit("the incremental run decided differently from the run from scratch")
    if not same:
        raise SystemExit("the two runs selected different customers: the comparison is void")


if __name__ == "__main__":
    main()
