"""The `lifecycle` command: one entry point for authors, operators and the demo.

Author and usage errors print `error[CODE]: ...` with a hint and exit 2; run errors exit 1; both
without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

from infra.errors import LifecycleError, UsageError


def _prefect_defaults() -> None:
    """No telemetry (there is no internet here, and ops data is not ours to report). The temporary server
    of Prefect's ephemeral mode gets 90 s to start instead of 20: on a busy two-core machine its first
    start (database migrations) took longer, and the run failed before doing anything."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD)") from None


# argument -> flag; `end` is --to, or --end for `data generate`
DATE_FLAGS = {"as_of": "--as-of", "start": "--from", "date_from": "--from", "date_to": "--to"}


def _check_dates(args: argparse.Namespace) -> None:
    """Dates on the command line within those lifecycle works with (infra/warehouse/limits.py): an as-of of
    0001-01-01 or 9999-12-31 is an L349 here, not an overflow halfway through a command."""
    from infra.warehouse.limits import ARG_EARLIEST, date_arg_problem

    generate = args.command == "data" and getattr(args, "data_command", None) == "generate"
    for name, value in vars(args).items():
        if isinstance(value, dt.date):
            flag = DATE_FLAGS.get(name) or ("--end" if generate else "--to")
            problem = date_arg_problem(flag, value)
            if problem:
                raise UsageError(problem, hint="give a real date as YYYY-MM-DD", code="L349")
    if generate and args.days:
        end = args.end or dt.datetime.now(dt.UTC).date()
        if (end - ARG_EARLIEST).days < args.days:
            raise UsageError(f"--days {args.days:,} before {end} reaches back before {ARG_EARLIEST}",
                             hint="generate fewer days of history", code="L349")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", metavar="URL", help="SQLAlchemy URL of the warehouse (default: LIFECYCLE_DB_URL, "
                        "then lifecycle.yaml, then sqlite:///$LIFECYCLE_HOME/warehouse.db)")
    common.add_argument("--config", metavar="FILE", help="project config (default: LIFECYCLE_CONFIG, then ./lifecycle.yaml)")

    top = argparse.ArgumentParser(prog="lifecycle", description="YAML lifecycle playbooks compiled into Prefect flows.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", parents=[common], help="generate a demo world (if empty), train, run every shipped playbook")
    demo.add_argument("--customers", type=_positive, default=50_000, help="size of the demo world (default 50000)")
    demo.add_argument("--seed", type=int, default=7)

    run = sub.add_parser("run", parents=[common], help="compile a playbook and run it as a Prefect flow")
    run.add_argument("playbook", help="path to a playbook YAML file (or the name of a shipped playbook)")
    run.add_argument("--as-of", type=_date, help="date the run acts on (default: today, UTC)")
    run.add_argument("--dry-run", action="store_true", help="decide and render, but write and send nothing")
    run.add_argument("--shards", type=_positive, metavar="N", help="split the customers into N shards run on Dask "
                     "(extract, features, score and dispatch per shard; default: execution.shards in lifecycle.yaml, else 1)")
    run.add_argument("--dask", nargs="?", const="local", metavar="ADDRESS", help="the Dask scheduler for the shards "
                     "(tcp://HOST:8786); without ADDRESS a temporary local cluster (default: execution.dask in lifecycle.yaml)")

    check = sub.add_parser("check", parents=[common], help="validate playbooks, templates and config; no data touched")
    check.add_argument("playbooks", nargs="*", metavar="PATHS",
                       help="playbook files, folders of them or shipped names (default: every shipped playbook)")

    plan = sub.add_parser("plan", parents=[common], help="dry run against the warehouse: counts, costs, drops, "
                          "sample messages; sends and writes nothing")
    plan.add_argument("playbook", help="path to a playbook YAML file (or the name of a shipped playbook)")
    plan.add_argument("--as-of", type=_date, help="date to plan for (default: today, UTC)")
    plan.add_argument("--format", choices=["table", "json"], default="table")

    compile_ = sub.add_parser("compile", parents=[common], help="write the compiled plan as canonical JSON")
    compile_.add_argument("playbook", help="path to a playbook YAML file (or the name of a shipped playbook)")
    compile_.add_argument("--out", metavar="FILE", help="write here instead of standard output")

    data = sub.add_parser("data", help="warehouse data").add_subparsers(dest="data_command", required=True, metavar="ACTION")
    gen = data.add_parser("generate", parents=[common], help="generate a realistic demo world into an empty warehouse")
    gen.add_argument("--customers", type=_positive, required=True)
    gen.add_argument("--days", type=_positive, default=730, help="days of history (default 730)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--end", type=_date, help="last day of the history (default: today, UTC)")

    model = sub.add_parser("model", help="the churn model").add_subparsers(dest="model_command", required=True, metavar="ACTION")
    from flows.modelcmds import add_arguments  # train / score / backtest, and `data import`

    add_arguments(model, data, common, _date, _positive)
    from flows.reportcmd import add_arguments as add_report  # `lifecycle report PLAYBOOK`

    add_report(sub, common, _date)
    from flows import kpicmd  # `lifecycle kpis`

    kpicmd.add_arguments(sub, common, _date)
    from flows import explain  # `lifecycle explain CUSTOMER_ID`

    explain.add_arguments(sub, common, _date)
    from flows import upliftcmd  # `lifecycle uplift PLAYBOOK`

    upliftcmd.add_arguments(sub, common, _date)

    db = sub.add_parser("db", help="the warehouse schema").add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db.add_parser("upgrade", parents=[common], help="create the tables or apply pending migrations")
    db.add_parser("status", parents=[common], help="show the warehouse URL, schema revision and every table's row count")

    deliver = sub.add_parser("deliver", parents=[common], help="send deferred touches whose quiet hours are over "
                             "(schedule it hourly; each playbook run also does it for itself)")
    deliver.add_argument("--playbook", metavar="NAME", help="only this playbook's touches (default: all)")

    events = sub.add_parser("events", help="event-triggered playbooks").add_subparsers(
        dest="events_command", required=True, metavar="ACTION")
    relay = events.add_parser("relay", parents=[common], help="hand new trigger events to their playbooks "
                              "(Prefect events for deployment triggers, or runs here without a server)")
    relay.add_argument("playbooks", nargs="*", metavar="PATHS",
                       help="playbooks to consider (default: every shipped one)")
    relay.add_argument("--mode", choices=["emit", "run"], help="emit Prefect events (default with PREFECT_API_URL) "
                       "or run the triggered playbooks in this process (default without)")
    relay.add_argument("--every", type=_positive, metavar="SECONDS", help="keep relaying at this interval")
    ui = sub.add_parser("ui", help="start the Prefect UI on http://127.0.0.1:4200 (or --port) to look at runs")
    ui.add_argument("--port", type=_port, default=4200, help="the port to serve it on (default 4200)")
    from flows.deploycmd import add_arguments as add_deploy  # `lifecycle deploy`

    add_deploy(sub)
    return top


def _relay(args: argparse.Namespace) -> int:
    from flows.relay import relay_cmd  # imports Prefect: only when relaying

    return relay_cmd(args)


def main(argv: list[str] | None = None) -> int:
    _prefect_defaults()
    args = parser().parse_args(argv)
    try:
        _check_dates(args)
        from flows import commands, deploycmd, modelcmds
        from flows import reportcmd
        from flows import kpicmd
        from flows import explain
        from flows import upliftcmd

        handler = {
            "demo": commands.demo, "run": commands.run, "check": commands.check, "ui": commands.ui,
            "plan": commands.plan_cmd, "compile": commands.compile_cmd, "deliver": commands.deliver,
            "deploy": deploycmd.deploy_cmd, "events": _relay,
            "data": modelcmds.data,
            "model": modelcmds.model,
            "report": reportcmd.report,
            "kpis": kpicmd.kpis,
            "explain": explain.explain_cmd,
            "uplift": upliftcmd.uplift_cmd,
            "db": lambda a: commands.db_upgrade(a) if a.db_command == "upgrade" else commands.db_status(a),
        }[args.command]
        return handler(args) or 0
    except LifecycleError as exc:
        print(exc.render(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume (sent touches are not repeated)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
