"""The event relay as a Prefect flow and a command: `lifecycle events relay [PLAYBOOKS...] [--every S]`.

Each pass hands every new window of the trigger events on (tasks/events.py): to a Prefect server as
`lifecycle.<type>` events that the playbooks' deployment triggers turn into runs (`emit`), or, with
no server, by running the triggered playbooks in this process (`run`). Deploy it every minute, or
keep `--every 60` running next to a worker.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import time
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.artifacts import relay_markdown
from flows.compiler import compile_file
from flows.plan import Plan
from infra.errors import AuthorError
from infra.settings import load_config
from models import registry
from tasks.common import warehouse
from tasks.events import emit_window, relay

Mode = Literal["emit", "run"]
log = logging.getLogger("lifecycle.relay")


def default_mode() -> Mode:
    """Emit to the Prefect server when there is one (deployment triggers start the runs), else run here."""
    return "emit" if os.environ.get("PREFECT_API_URL") else "run"


def _run_name() -> str:
    return f"event-relay-{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M}"


@flow(name="event-relay", persist_result=False, validate_parameters=False, flow_run_name=_run_name)
def relay_flow(playbooks: list[str], mode: str | None = None) -> dict[str, Any]:
    """One pass: new trigger events -> Prefect events (emit) or triggered runs in this process (run).

    A playbook that no longer compiles is reported and left out; the others still get their events.
    """
    from flows.build import run_plan

    config = load_config()
    engine = warehouse()
    plans: list[tuple[Plan, str]] = []
    broken: list[str] = []
    for path in playbooks:
        try:
            plan = compile_file(path, config)
        except AuthorError as exc:
            broken.append(f"{path}: {exc.message}")
            continue
        if plan.trigger is not None:
            plans.append((plan, path))
    mode = mode or default_mode()
    runs: list[dict] = []

    def hand_over(event_type: str, start: dt.datetime, end: dt.datetime, count: int) -> None:
        if mode == "emit":
            emit_window(event_type, start, end, count)
            return
        for plan, path in plans:
            if plan.trigger.event != event_type:
                continue
            model = registry.require(engine, plan.model) if plan.model else None
            summary = run_plan(plan, path, plan.local_day(end.replace(tzinfo=dt.UTC)), dry_run=False,
                               model_version=model.version if model else None, window=(start, end))
            runs.append({"playbook": plan.name, "triggered_by": summary.get("triggered_by", 0),
                         "touches": summary["touches"]})

    windows = relay(engine, {p.trigger.event for p, _ in plans}, hand_over)
    create_markdown_artifact(markdown=relay_markdown(mode, [p.name for p, _ in plans], windows, runs, broken),
                             key="event-relay", description="event windows handed on")
    if broken:
        log.warning("event relay: %d playbook(s) skipped because they do not compile: %s", len(broken), broken)
    return {"mode": mode, "windows": windows, "runs": runs, "broken": broken}


def relay_cmd(args: argparse.Namespace) -> int:
    from flows.commands import _context, _playbook_paths

    _context(args)
    paths = [str(p) for p in _playbook_paths(args.playbooks)]
    while True:
        out = relay_flow(playbooks=paths, mode=args.mode)
        for event_type, w in out["windows"].items():
            print(f"{event_type}: {w['events']:,} new events up to {w['window_end']} ({out['mode']})")
        for r in out["runs"]:
            print(f"  ran {r['playbook']} for {r['triggered_by']:,} customers; touches: {r['touches'] or 'none'}")
        if not out["windows"]:
            print("no playbook has a trigger, or nothing new yet")
        for b in out["broken"]:
            print(f"  skipped (does not compile; run `lifecycle check`): {b}")
        if not args.every:
            return 0
        time.sleep(args.every)
