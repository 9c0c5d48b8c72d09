"""What each `lifecycle` command does; the argument parsing lives in cli.py, the output format here."""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from flows.compiler import compile_file
from flows.plan import Plan
from flows.summary import format_counts, format_summary
from infra.errors import UsageError, WarehouseError
from infra.redact import mask_url
from infra.wording import counted
from infra.settings import SHIPPED_PLAYBOOKS, ProjectConfig, load_config, resolve_db_url
from infra.warehouse import schema
from infra.warehouse.db import (current_revision, display_url, head_revision, open_warehouse,
                                require_customers, upgrade)


def _context(args: argparse.Namespace, *, create: bool = False) -> tuple[ProjectConfig, str, Engine]:
    """Config, warehouse URL and engine; flags are exported so the flow's tasks resolve the same ones."""
    config = load_config(args.config)
    url = resolve_db_url(args.db, config)
    engine = open_warehouse(url, create=create)
    os.environ["LIFECYCLE_DB_URL"] = url
    if config.source != "built-in default":
        os.environ["LIFECYCLE_CONFIG"] = str(Path(config.source).resolve())
    return config, url, engine


def _shown(url: str) -> str:
    """A warehouse URL as it may be printed: password (SQLAlchemy's ***) and credential parameters masked."""
    return mask_url(display_url(url))


def resolve_playbook(arg: str) -> Path:
    """A path, or the name of a shipped playbook."""
    path = Path(arg)
    if path.is_file():
        return path
    shipped = SHIPPED_PLAYBOOKS / f"{arg}.yaml"
    if "/" not in arg and shipped.is_file():
        return shipped
    names = sorted(p.stem for p in SHIPPED_PLAYBOOKS.glob("*.yaml"))
    close = difflib.get_close_matches(path.stem, names, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"shipped playbooks: {', '.join(names)}"
    raise UsageError(f"playbook not found: {arg}", hint=hint, code="L303")


def shipped_playbooks() -> list[Path]:
    return sorted(SHIPPED_PLAYBOOKS.glob("*.yaml"))


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _last_activity(engine: Engine) -> dt.date:
    """The last day with an order: the demo runs as of it."""
    from tasks.source import SqlSource  # imports Prefect: only the commands that run flows need it

    last = SqlSource(engine).last_order_day()
    if last is None:
        raise WarehouseError("the warehouse has no orders to train on",
                             hint="import orders or run `lifecycle data generate`", code="L408")
    return last


# ---- check / run -------------------------------------------------------------------------------

def _playbook_paths(args: list[str]) -> list[Path]:
    """Files, folders (their *.yaml) and shipped names; no arguments: every shipped playbook."""
    if not args:
        return shipped_playbooks()
    paths: list[Path] = []
    for arg in args:
        folder = Path(arg)
        paths += sorted(folder.glob("*.yaml")) if folder.is_dir() else [resolve_playbook(arg)]
    return paths


def check(args: argparse.Namespace) -> int:
    """Validate the project config, then every playbook and its templates; report every problem."""
    from infra.errors import AuthorError

    warnings: list[str] = []
    config = load_config(args.config, warnings=warnings)  # a broken config is reported (exit 2) before any playbook
    for warning in warnings:  # loaded once here, so each is printed once; they do not fail the check
        print(warning + "\n", file=sys.stderr)
    failed = 0
    for arg in args.playbooks or [None]:
        try:
            paths = _playbook_paths([arg] if arg else [])
        except UsageError as exc:
            print(exc.render(), file=sys.stderr)
            failed += 1
            continue
        for path in paths:
            try:
                plan = compile_file(path, config)
            except AuthorError as exc:
                print(exc.render() + "\n", file=sys.stderr)
                failed += 1
                continue
            tiers = sum(len(s.tiers) for s in plan.segments)
            print(f"ok  {plan.name} v{plan.version}  plan {plan.plan_hash}  "
                  f"{counted(len(plan.segments), 'segment')}, {counted(tiers, 'tier')}, "
                  f"{counted(len(plan.follow_ups), 'follow-up')}, "
                  f"channels: {', '.join(plan.channels)}")
    return 2 if failed else 0


def compile_cmd(args: argparse.Namespace) -> int:
    """The plan as canonical JSON (sorted keys, two-space indent) on stdout or in --out."""
    plan = compile_file(resolve_playbook(args.playbook), load_config(args.config))
    text = plan.to_json(indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out} (plan {plan.plan_hash})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def plan_cmd(args: argparse.Namespace) -> int:
    """A dry run against the warehouse: who would get what, at what cost; nothing sent or written."""
    import json

    from flows.preview import format_preview, preview

    path = resolve_playbook(args.playbook)
    plan = compile_file(path, load_config(args.config))
    config, url, engine = _context(args)
    model = _prepare_run(plan, engine)
    from models.registry import trained_after

    as_of = args.as_of or _today()
    if trained_after(model, as_of):  # a past day, scored by a model that learned from the days after it
        print(f"warning: {trained_after(model, as_of)}", file=sys.stderr)
    report = preview(plan, engine, as_of, model, control=config.control_group,
                     default_timezone=config.defaults.timezone)
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.format == "json" else format_preview(report))
    return 0


def _prepare_run(plan: Plan, engine: Engine):
    """Everything that can be wrong before a flow starts, reported as one clear line."""
    require_customers(engine)
    if "uplift_score" in plan.features:  # a rule gates on predicted uplift: its model must exist
        from tasks.uplift import for_plan

        for_plan(engine, plan)
    if plan.model:
        from models import registry

        return registry.require(engine, plan.model)
    return None


def run(args: argparse.Namespace) -> int:
    path = resolve_playbook(args.playbook)
    project = load_config(args.config)
    plan = compile_file(path, project)  # author errors first: they need no database
    from flows import sharded  # shards on Dask: a bad flag, a missing package or a scheduler that is down, now

    sharded.check(sharded.resolve(project.execution, args.shards, args.dask))
    config, url, engine = _context(args)
    model = _prepare_run(plan, engine)
    as_of = args.as_of or _today()
    from flows.build import run_plan

    summary = run_plan(plan, str(path), as_of, dry_run=args.dry_run, model_version=model.version if model else None,
                       shards=args.shards, dask=args.dask)
    print(format_summary(summary))
    if summary.get("execution"):
        print(sharded.describe_report(summary["execution"]))
    print(_ui_hint([summary]))
    return 0


def deliver(args: argparse.Namespace) -> int:
    """Deferred touches that are due go out now (through a Prefect flow run, like every send)."""
    config, url, engine = _context(args)
    require_customers(engine)
    from flows.build import deliver_flow

    result = deliver_flow(playbook=args.playbook)
    print(f"deferred touches due: sent {format_counts(result['sent'])}; dropped {format_counts(result['dropped'])}; "
          f"failed {format_counts(result['failed'])}")
    return 0


# ---- demo --------------------------------------------------------------------------------------

def demo(args: argparse.Namespace) -> int:
    """Generate a world (if empty), train, run every shipped playbook a month before the data ends, let the
    world answer back over that month (simulated responses) and report what each playbook caused."""
    config, url, engine = _context(args, create=True)
    upgrade(engine)
    print(f"warehouse: {_shown(url)}")
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(schema.customers)).scalar_one()
    if n == 0:
        _generate(engine, args.customers, 730, args.seed, _today())
    else:
        print(f"world: keeping the {n:,} customers already in the warehouse")
    last = _last_activity(engine)
    from flows.reportcmd import DEMO_RESPONSE_DAYS, demo_measure

    as_of = last - dt.timedelta(days=DEMO_RESPONSE_DAYS)  # the month after the runs shows what they caused
    from models import registry

    model = registry.latest(engine)
    if model is None:
        model = _train(engine, as_of, 90)
    else:
        print(f"model: using {model.version}")
    from flows.build import run_plan

    summaries = []
    plans = [(compile_file(path, config), path) for path in shipped_playbooks()]
    # Higher priority first: it takes the frequency-cap slots when playbooks compete for a customer.
    for plan, path in sorted(plans, key=lambda pp: (-pp[0].guardrails.priority, pp[0].name)):
        summaries.append(run_plan(plan, str(path), as_of, dry_run=False,
                                  model_version=model.version if plan.model else None))
    print()
    for summary in summaries:
        print(format_summary(summary))
        print()
    # the hourly deliverer of a real deployment, replayed over the two days after the runs
    from tasks.deferred import replay_deliveries

    start = dt.datetime.combine(as_of, dt.time())
    later = replay_deliveries(engine, config, start, start + dt.timedelta(days=2))
    if later.sent or later.dropped:
        print(f"deferred touches, delivered hour by hour when quiet hours ended: sent {format_counts(later.sent)}; "
              f"dropped {format_counts(later.dropped)}")
    for line in demo_measure(engine, config, [p for p, _ in plans], as_of, args.seed,
                             until=dt.datetime.combine(last, dt.time())):
        print(line)
    print()
    print(_ui_hint(summaries))
    return 0


# ---- data / model / db -------------------------------------------------------------------------

def _generate(engine: Engine, customers: int, days: int, seed: int, end: dt.date) -> None:
    from infra.demoworld import iter_world, load_world

    started = time.perf_counter()
    # streamed chunk by chunk: memory stays flat however many customers
    counts = load_world(engine, iter_world(customers, days=days, seed=seed, end=end))
    took = time.perf_counter() - started
    print(f"world: {counts['customers']:,} customers, {counts['orders']:,} orders, {counts['events']:,} events, "
          f"{counts['consents']:,} consents over {days} days to {end} (seed {seed}, {took:.1f} s)")


def data_generate(args: argparse.Namespace) -> int:
    _, url, engine = _context(args, create=True)
    upgrade(engine)
    print(f"warehouse: {_shown(url)}")
    _generate(engine, args.customers, args.days, args.seed, args.end or _today())
    return 0


def _train(engine: Engine, as_of: dt.date, horizon: int):
    from flows.training import train
    from infra.progress import Progress

    started = time.perf_counter()
    model = train(engine, as_of, horizon, progress=Progress(sys.stderr, "training: ", started=started))
    m = model.metrics
    print(f"model: trained {model.version} in {time.perf_counter() - started:.1f} s: validation AUC {m['valid_auc']:.3f} "
          f"on {m['valid_examples']:,} customers (churn base rate {m['valid_base_rate']:.0%}), "
          f"{m['train_examples']:,} training examples")
    return model


def db_upgrade(args: argparse.Namespace) -> int:
    _, url, engine = _context(args, create=True)
    before, after = upgrade(engine)
    print(f"{_shown(url)}: schema {'created at' if before is None else 'upgraded from ' + before + ' to'} {after}"
          if before != after else f"{_shown(url)}: schema already at {after}")
    return 0


def db_status(args: argparse.Namespace) -> int:
    _, url, engine = _context(args)
    rev = current_revision(engine)
    print(f"warehouse: {_shown(url)}")
    print(f"schema:    {rev or 'none'} (this version of lifecycle: {head_revision()})")
    if rev:
        width = max(map(len, schema.metadata.tables)) + 2
        with engine.connect() as conn:  # every table lifecycle keeps, in the schema's order
            for name, table in schema.metadata.tables.items():
                n = conn.execute(select(func.count()).select_from(table)).scalar_one()
                print(f"{name:<{width}}{n:>12,}")
    return 0


def ui(args: argparse.Namespace) -> int:
    """The Prefect UI over the same local database the ephemeral runs wrote to, on 127.0.0.1:--port."""
    prefect = Path(sys.executable).with_name("prefect")
    url = f"http://127.0.0.1:{args.port}"
    # the page in the browser calls the API at PREFECT_UI_API_URL, which `--port` alone leaves at :4200
    env = {**os.environ, "PREFECT_UI_API_URL": os.environ.get("PREFECT_UI_API_URL") or f"{url}/api"}
    print(f"Prefect UI on {url} (Ctrl-C to stop)", flush=True)
    return subprocess.call([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(args.port)], env=env)


# ---- output ------------------------------------------------------------------------------------

def _ui_hint(summaries: list[dict]) -> str:
    ui = "http://127.0.0.1:4200"  # where `lifecycle ui` serves the runs of the embedded default
    if os.environ.get("PREFECT_API_URL"):  # the server the runs went to: its UI (PREFECT_UI_URL, else beside the API)
        from prefect.settings import PREFECT_UI_URL

        ui = (PREFECT_UI_URL.value() or ui).rstrip("/")
    ui = mask_url(ui)  # PREFECT_UI_URL may carry credentials (https://user:pw@prefect.example)
    runs = "\n".join(f"  {s['flow_run_name']}: {ui}/runs/flow-run/{s['flow_run_id']}" for s in summaries)
    if os.environ.get("PREFECT_API_URL"):
        return "Runs in the Prefect UI:\n" + runs
    return ("To open these runs in the Prefect UI, run `lifecycle ui` (or `prefect server start`) and visit:\n" + runs)
