"""Plan -> Prefect flow: one flow run per playbook and as-of date, one task per pipeline step.

The flow is importable at module level (deployments need an entrypoint); its name and run name are
set per playbook with `with_options`. Secrets never travel as flow parameters: the warehouse URL
comes from LIFECYCLE_DB_URL / the config where the flow runs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow, tags
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from flows.compiler import compile_file
from flows.plan import Plan
from infra.settings import load_config
from models import registry
from tasks.allocate import allocate
from tasks.common import warehouse
from tasks.dispatch import DispatchResult, dispatch
from tasks.extract import extract
from tasks.features import features
from tasks.score import drift, reasons, score
from tasks.segment import segment


@flow(name="playbook", persist_result=False, validate_parameters=False)
def playbook_flow(playbook: str, as_of: str, dry_run: bool = False) -> dict[str, Any]:
    """Compile the playbook, then extract -> features -> score -> segment -> allocate -> dispatch."""
    config = load_config()
    plan = compile_file(playbook, config)
    day = dt.date.fromisoformat(as_of)
    engine = warehouse()
    model = registry.require(engine, plan.model) if plan.model else None
    raw = extract(engine, day)
    feats = features(raw)
    scored = score(feats, model)
    # "warn" (default) or "stop" when a score or key feature drifted far (PSI > 0.25) from training
    drift(scored, model, policy=getattr(plan, "drift_policy", "warn"), playbook=plan.name)
    selected, counts = segment(scored, plan, day)
    allocated = reasons(allocate(selected, plan, day, engine), model)
    result = dispatch(allocated, plan, day, engine=engine, config=config, run_id=str(flow_run.id),
                      model_version=model.version if model else None, dry_run=dry_run)
    summary = summarize(plan, day, dry_run, counts, result, model.version if model else None)
    _publish(plan, summary)
    return summary


def summarize(plan: Plan, as_of: dt.date, dry_run: bool, counts: dict, result: DispatchResult,
              model_version: str | None) -> dict[str, Any]:
    return {
        "playbook": plan.name, "version": plan.version, "as_of": as_of.isoformat(), "dry_run": dry_run,
        "plan_hash": plan.plan_hash, "model_version": model_version,
        "flow_run_id": str(flow_run.id), "flow_run_name": flow_run.name,
        **counts,
        "touches": result.sent, "already_sent": result.already_sent, "dropped": result.dropped,
        "deferred": result.deferred,
        "segment_channel": result.segment_channel, "outboxes": result.outboxes, "previews": result.previews,
    }


def _publish(plan: Plan, summary: dict[str, Any]) -> None:
    """What ops see on the flow-run page: a readable summary and a segment x channel table."""
    key = plan.name.replace("_", "-")
    verb = "would send" if summary["dry_run"] else "sent"
    lines = [
        f"# {plan.name} on {summary['as_of']}{' (dry run)' if summary['dry_run'] else ''}",
        "",
        f"- plan `{summary['plan_hash']}`, version {plan.version}, model `{summary['model_version'] or 'none'}`",
        f"- {summary['customers']:,} customers; {summary['audience']:,} in the audience;"
        f" {summary['unmatched']:,} matched no segment",
        f"- touches {verb}: " + (", ".join(f"{ch} {n:,}" for ch, n in sorted(summary["touches"].items())) or "none"),
        f"- already sent by an earlier run today: {summary['already_sent']:,}",
        "- not touched: " + (", ".join(f"{r} {n:,}" for r, n in sorted(summary["dropped"].items())) or "none"),
        f"- deferred until quiet hours end: {summary['deferred']:,}",
    ]
    for ch, where in sorted(summary["outboxes"].items()):
        lines.append(f"- outbox `{ch}`: `{where}`")
    create_markdown_artifact(markdown="\n".join(lines), key=f"{key}-summary", description="run summary")
    rows = [
        {"segment": seg, "customers": n, **summary["segment_channel"].get(seg, {})}
        for seg, n in summary["segments"].items()
    ]
    create_table_artifact(table=rows, key=f"{key}-segments", description="customers per segment and channel")


def run_plan(plan: Plan, playbook_path: str, as_of: dt.date, *, dry_run: bool, model_version: str | None) -> dict:
    """Run one playbook in this process (Prefect's ephemeral mode unless PREFECT_API_URL is set)."""
    run_tags = [f"playbook:{plan.name}", f"plan:{plan.plan_hash}"]
    if model_version:
        run_tags.append(f"model:{model_version}")
    if dry_run:
        run_tags.append("dry-run")
    named = playbook_flow.with_options(name=plan.name, flow_run_name=f"{plan.name}-{as_of.isoformat()}")
    with tags(*run_tags):
        return named(playbook=playbook_path, as_of=as_of.isoformat(), dry_run=dry_run)
