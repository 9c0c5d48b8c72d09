"""`lifecycle model train|score|backtest` and `lifecycle data import`: the model's commands.

Each works on the warehouse (`--db URL`) or, with `--orders FILE.csv` (plus optional `--customers`
and `--events` files), on CSV files alone, with no warehouse at all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

import pandas as pd

from typing import TYPE_CHECKING

from infra.errors import UsageError
from infra.redact import csv_safe, strip_controls
from infra.warehouse import csvimport

if TYPE_CHECKING:  # tasks.source imports Prefect; `lifecycle check` must not pay for that
    from tasks.source import Source


def _source(args: argparse.Namespace) -> tuple[Source, object | None]:
    """CSV frames when --orders is given (no warehouse touched), else the warehouse; plus its engine."""
    from tasks.source import FrameSource, SqlSource

    if getattr(args, "orders", None):
        orders = csvimport.read("orders", args.orders)
        customers = csvimport.read("customers", args.customers) if getattr(args, "customers", None) else None
        events = csvimport.read("events", args.events) if getattr(args, "events", None) else None
        name = ", ".join(str(p) for p in (args.orders, getattr(args, "customers", None),
                                          getattr(args, "events", None)) if p)
        return FrameSource(orders, customers, events, name=name), None
    for flag in ("customers", "events"):
        if getattr(args, flag, None):
            raise UsageError(f"--{flag} goes with --orders (CSV files instead of a warehouse)",
                             hint="import it with `lifecycle data import`, or pass --orders too", code="L323")
    from flows.commands import _context
    from infra.warehouse.db import require_customers

    _, _, engine = _context(args)
    require_customers(engine)
    return SqlSource(engine), engine


def _as_of(args: argparse.Namespace, source: Source) -> dt.date:
    if args.as_of:
        return args.as_of
    last = source.last_order_day()
    if last is None:
        raise UsageError("there are no orders to work with", hint="import orders or pass --orders FILE.csv",
                         code="L324")
    return last


def model_train(args: argparse.Namespace) -> int:
    import sys

    from flows.training import fit_at
    from infra.progress import Progress
    from models import registry

    source, engine = _source(args)
    as_of = _as_of(args, source)
    started = time.perf_counter()
    model = fit_at(source, as_of, args.horizon_days, progress=Progress(sys.stderr, "training: ", started=started))
    m = model.metrics
    print(f"model: trained {model.version} in {time.perf_counter() - started:.1f} s on {source.describe()}, "
          f"data up to {as_of}")
    print(f"  validation AUC {m['valid_auc']:.3f} on {m['valid_examples']:,} customers (churn base rate "
          f"{m['valid_base_rate']:.0%}); {m['train_examples']:,} training examples, {m['best_iteration']} trees")
    print(f"  calibration: Brier {m['valid_brier_raw']:.4f} -> {m['valid_brier_calibrated']:.4f} on held-out customers")
    print(f"  features: {len(model.feature_names)} ({'with' if model.meta['data']['events'] else 'without'} events)")
    if engine is not None:
        registry.save(engine, model)
        print("  registered in the warehouse: flows score with it from now on")
    if args.out:
        print(f"  written to {registry.save_dir(model, args.out)}")
    return 0


def model_score(args: argparse.Namespace) -> int:
    import sys

    from infra.progress import Progress
    from models import registry
    from models.reasons import joined
    from tasks.features import build_features
    from tasks.score import check_drift

    model = registry.load_dir(args.model)
    source, _ = _source(args)
    as_of = _as_of(args, source)
    started = time.perf_counter()
    say = Progress(sys.stderr, "scoring: ", started=started)
    feats = build_features(source.extract(as_of))
    feats = feats[feats["orders_total"] > 0]
    say(f"features of {len(feats):,} buyers as of {as_of}")
    model.check_schema(feats)
    scores = model.predict(feats)
    scored = feats.assign(churn_score=scores)
    out = pd.DataFrame({"customer_id": feats.index, "churn_probability": scores.round(4).to_numpy()})
    n = len(out) if args.reasons == "all" else min(int(args.reasons), len(out))
    shown = out["churn_probability"].set_axis(feats.index)
    # everyone tied with the n-th highest score as written gets reasons too, so "the top n" of the
    # file always has them
    top = shown.index[shown >= shown.nlargest(n).min()] if n else shown.index[:0]
    say(f"scored; reasons for the {len(top):,} highest (about 0.5 ms each)")
    reasons = (model.reasons(feats.loc[top]) if len(top) else
               pd.DataFrame(columns=["reason_1", "reason_2", "reason_3"], dtype=object)).reindex(feats.index).fillna("")
    for col in reasons.columns:
        out[col] = reasons[col].to_numpy()
    _csv_safe_text(out).to_csv(args.out, index=False)
    took = time.perf_counter() - started
    print(f"scored {len(out):,} customers as of {as_of} with {model.version} in {took:.1f} s -> {args.out}")
    print(f"  mean churn probability {scores.mean():.1%}; {int((scores >= 0.5).sum()):,} at 50% or more; "
          f"reasons for the {len(top):,} highest")
    report, warnings = check_drift(scored, model, policy=args.drift_policy, playbook="model score")
    for line in warnings:
        print(f"  warning: {line}")
    if report is not None and not warnings:
        print(f"  drift: none (largest PSI {report.worst:.3f})")
    if n:
        example = out.set_index("customer_id").loc[top[0]]
        print(strip_controls(f"  highest risk: {top[0]} {example['churn_probability']:.0%}: "
                             f"{joined(reasons.loc[[top[0]]]).iloc[0]}", keep=""))
    return 0


def _csv_safe_text(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every text cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab,
    CR first) prefixed with a quote (infra/redact.py csv_safe); numbers stay numbers."""
    text = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
    return frame.assign(**{c: frame[c].map(csv_safe, na_action="ignore") for c in text}) if text else frame


def model_backtest(args: argparse.Namespace) -> int:
    import sys

    from infra.progress import Progress
    from models import backtest, report

    source, _ = _source(args)
    last = _as_of(args, source)
    cutoffs = backtest.default_cutoffs(last, args.horizon_days, n=args.cutoffs)
    started = time.perf_counter()
    bt = backtest.run(source, cutoffs, args.horizon_days, progress=Progress(sys.stderr, "backtest: ", started=started))
    paths = report.write(bt, args.out, title=f"Churn backtest: {source.describe()}")
    print(f"backtest over cutoffs {', '.join(c.isoformat() for c in cutoffs)} "
          f"({len(bt.predictions):,} customer-cutoffs, {time.perf_counter() - started:.0f} s)")
    print(f"  {'model':<10}" + "".join(f"{k:>19}" for k in report.METRICS))
    for m in backtest.MODELS:
        print(f"  {m:<10}" + "".join(f"{bt.pooled[m][k]:>19.4f}" for k in report.METRICS))
    print(f"  report: {paths['html']} (also {paths['json'].name}, roc.png, calibration.png, lift.png)")
    return 0


def data_import(args: argparse.Namespace) -> int:
    from flows.commands import _context
    from infra.redact import mask_url
    from infra.warehouse import csvload
    from infra.warehouse.db import display_url, upgrade

    mapping, types = csvimport.parse_mapping(args.map), csvimport.parse_type_mapping(args.map_type)
    if types and args.kind != "events":
        raise UsageError("--map-type goes with events files", hint="rename columns with --map SOURCE=TARGET",
                         code="L346")
    config, url, engine = _context(args, create=True)
    zone = _default_zone(args.default_timezone, config.defaults.timezone)
    purposes = (*csvimport.CONSENT_PURPOSES, *sorted({c.purpose for c in config.channels.values()}
                                                     - set(csvimport.CONSENT_PURPOSES)))
    upgrade(engine)
    done = csvload.load(engine, args.kind, args.file, mapping, type_map=types, create_customers=args.create_customers,
                        default_timezone=zone, purposes=purposes, errors=args.errors)
    print(strip_controls(import_summary(done, args.kind, args.file, mask_url(display_url(url)), zone)))
    return 0


def import_summary(done, kind: str, file: str, where: str, zone) -> str:
    """What `data import` did, a line, then a line per warning."""
    line = f"imported {done.rows:,} {kind if done.rows != 1 else kind[:-1]} from {file} into {where}"
    if kind == "customers":
        line += f": {done.rows - done.updated:,} new, {done.updated:,} updated (the columns the file has overwritten)"
    if done.skipped:
        line += f"; {done.skipped:,} already in the warehouse, skipped"
    if done.created_customers:
        line += (f"; created {done.created_customers:,} customer{'s' if done.created_customers != 1 else ''} for "
                 "them (signed up at their first row, "
                 f"timezone {zone.name})")
    return "\n".join([line, *(f"  warning: {w}" for w in done.warnings)])


def _default_zone(flag: str | None, configured: str | None):
    """--default-timezone (L350 when zoneinfo does not know it), else defaults.timezone, else UTC."""
    from infra.settings import known_zone
    from infra.warehouse.csvload import DefaultZone

    if flag:
        if not known_zone(flag):
            near = csvimport.zone_near(flag)
            raise UsageError(f"--default-timezone {flag!r} is not a timezone zoneinfo knows{near}",
                             hint="give an IANA name such as Asia/Shanghai or Europe/Berlin", code="L350")
        return DefaultZone(flag, "--default-timezone")
    if configured:
        return DefaultZone(configured, "defaults.timezone in lifecycle.yaml")
    return DefaultZone()


def data(args: argparse.Namespace) -> int:
    from flows import commands

    return data_import(args) if args.data_command == "import" else commands.data_generate(args)


def model(args: argparse.Namespace) -> int:
    return {"train": model_train, "score": model_score, "backtest": model_backtest}[args.model_command](args)


def _reasons(text: str) -> str:
    if text == "all" or (text.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"--reasons takes a number or 'all', not {text!r}")


def add_arguments(model_sub, data_sub, common: argparse.ArgumentParser, date, positive) -> None:
    """The model and data subcommands' arguments (cli.py owns the parser; this keeps its blocks short)."""
    csv = argparse.ArgumentParser(add_help=False)
    csv.add_argument("--orders", metavar="CSV", help="read orders from this CSV file instead of the warehouse")
    csv.add_argument("--customers", metavar="CSV", help="with --orders: customers CSV (tenure, tier, points)")
    csv.add_argument("--events", metavar="CSV", help="with --orders: events CSV (engagement features)")

    train = model_sub.add_parser("train", parents=[common, csv], help="train the churn model (warehouse or --orders CSV)")
    train.add_argument("--as-of", type=date, help="use only data up to this date (default: last order date)")
    train.add_argument("--horizon-days", type=positive, default=90, help="churn = no order within this many days (default 90)")
    train.add_argument("--out", metavar="DIR", help="also write the model to DIR/<version>/ (model.txt, model.json)")

    score = model_sub.add_parser("score", parents=[common, csv], help="score customers with a model from disk")
    score.add_argument("--model", metavar="DIR", required=True, help="a folder written by `model train --out`")
    score.add_argument("--as-of", type=date, help="score as of this date (default: last order date)")
    score.add_argument("--out", metavar="CSV", required=True, help="write customer_id, churn_probability, reasons here")
    score.add_argument("--reasons", type=_reasons, default="10000",
                       help="reason codes for this many highest-risk customers, or 'all' (default 10000; "
                            "they cost about 0.5 ms per customer)")
    score.add_argument("--drift-policy", choices=["warn", "stop"], default="warn",
                       help="when inputs drifted far from training (PSI > 0.25): warn (default) or stop")

    bt = model_sub.add_parser("backtest", parents=[common, csv], help="backtest against base rate, recency and BG/NBD")
    bt.add_argument("--as-of", type=date, help="last day of data to use (default: last order date)")
    bt.add_argument("--horizon-days", type=positive, default=90)
    bt.add_argument("--cutoffs", type=positive, default=3, help="number of cutoffs, a month apart (default 3)")
    bt.add_argument("--out", metavar="DIR", required=True, help="folder for backtest.json, report.html and PNG charts")

    imp = data_sub.add_parser("import", parents=[common], help="validate a CSV file and load it into the warehouse")
    imp.add_argument("kind", choices=list(csvimport.KINDS))
    imp.add_argument("file", metavar="FILE.csv")
    imp.add_argument("--map", action="append", metavar="SRC=DST", help="rename a column before validation (repeatable)")
    imp.add_argument("--map-type", action="append", metavar="SRC=TYPE", help="events: read the source's event type "
                     "SRC as TYPE, one of lifecycle's (app.visit, product.view, message.open, message.click, "
                     "group.message); repeatable")
    imp.add_argument("--create-customers", action="store_true", help="orders, events, consents and suppressions: add "
                     "the customers the warehouse does not have (signed up at their first row in the file, the "
                     "default timezone) instead of refusing their rows")
    imp.add_argument("--default-timezone", metavar="ZONE", help="the timezone of customers without one (default: "
                     "defaults.timezone in lifecycle.yaml, else UTC), e.g. Asia/Shanghai")
    imp.add_argument("--errors", metavar="FILE", help="write every problem found to this CSV file (line, column, "
                     "value, problem); the terminal shows the first 20")
