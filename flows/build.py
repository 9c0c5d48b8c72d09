"""Plan -> Prefect flow: one flow run per playbook and as-of date, one task per pipeline step.

The flow is importable at module level (deployments need an entrypoint); its name and run name are
set per playbook with `with_options`. Secrets never travel as flow parameters: the warehouse URL
comes from LIFECYCLE_DB_URL / the config where the flow runs.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, tags
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import TagsContext
from prefect.runtime import flow_run

from flows.artifacts import deliver_markdown, drop_rows, effect_table, segment_rows
from flows.compiler import compile_file
from flows.deploycmd import default_as_of, run_name, tag_run
from flows.explain import DROPPED, dropped_text
from flows.plan import Plan
from flows.sharded import Shards, describe_report, partitioned, resolve
from flows.summary import outcome_lines
from infra.errors import LifecycleError, RunError, UsageError
from infra.redact import mask_secrets_in
from infra.settings import ProjectConfig, load_config
from infra.warehouse.bulk import utcnow
from infra.warehouse.limits import date_arg_problem
from models import registry
from tasks.allocate import allocate
from tasks.common import warehouse
from tasks.deferred import deliver_due
from tasks.dispatch import DispatchResult, dispatch
from tasks.events import triggered
from tasks.followups import enter_journeys, follow_ups
from tasks.guardrails import is_live
from tasks.measure import currency_of, fees_of, measure_task
from tasks.extract import extract, left_out
from tasks.features import features
from tasks.incremental import wait_saved
from tasks.journeys import due_customers
from tasks.score import drift, drift_sample, reasons, score, to_score
from tasks.segment import admit_entries, segment
from tasks.uplift import for_plan, uplift_scores


def _untagged_tasks(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run the flow body with no tags for its task runs (the flow run keeps run_plan's tags).

    A tagged task run costs a round trip for Prefect's tag concurrency limits (0.2-0.8 s each, 8 s
    a million-customer run), and the first one's context, result included, stays referenced by
    Prefect's lease service for the life of the process: with tags, every playbook `lifecycle demo`
    runs kept its whole extract (0.6 GB at a million customers) alive. Deployment runs' tasks carry
    no tags either; limits belong on deployments (flows/deploycmd.py).
    """
    @functools.wraps(fn)
    def body(*args: Any, **kwargs: Any) -> Any:
        with TagsContext(current_tags=set()):
            return fn(*args, **kwargs)

    return body


@flow(name="playbook", persist_result=False, validate_parameters=False, flow_run_name=run_name)
@_untagged_tasks
def playbook_flow(playbook: str, as_of: str | None = None, dry_run: bool = False,
                  window_start: str | None = None, window_end: str | None = None,
                  shards: int | None = None, dask: str | None = None) -> dict[str, Any]:
    """Compile the playbook, then extract -> features -> score -> segment -> allocate -> dispatch.

    A triggered run (window_start/window_end, from the event relay) touches only the audience's
    customers who produced the playbook's trigger event in that window. `shards` / `dask` (default:
    lifecycle.yaml's `execution:`) partition the per-customer steps on Dask (flows/sharded.py).
    """
    config = load_config()
    try:
        with partitioned(resolve(config.execution, shards, dask)) as parts:
            return _playbook_run(config, parts, playbook, as_of, dry_run, window_start, window_end)
    finally:
        wait_saved()  # the feature state the extract keeps in the background, before the run ends


def _playbook_run(config: ProjectConfig, parts: Shards | None, playbook: str, as_of: str | None, dry_run: bool,
                  window_start: str | None, window_end: str | None) -> dict[str, Any]:
    plan = compile_file(playbook, config)
    day = run_day(as_of) if as_of else default_as_of(plan)  # deployments omit as_of
    engine = warehouse()
    model = registry.require(engine, plan.model) if plan.model else None
    model_warning = registry.trained_after(model, day)  # a past day scored by a model that saw later data
    if model_warning:
        get_run_logger().warning("%s: %s", plan.name, model_warning)
    tag_run(plan, model, triggered=bool(window_start and window_end))  # deployment runs: model:/trigger: tags
    if parts is None:
        raw = extract(engine, day, keep_state=not dry_run)  # a dry run writes nothing, not even the state
        feats = features(raw)
        # who may enter today (audience, re-entry rule) before anyone is scored: only they, the follow-ups
        # due and the drift check's sample are
        entering, entry = admit_entries(engine, feats, plan, day)
        sample = drift_sample(feats)
        keep = to_score(feats, entering, sample, due_customers(engine, plan.name, day))
        scored = score(feats[keep], model)
        entering, sample = entering[keep], sample[keep]
    else:  # per shard on the Dask cluster, back in customer-id order
        scored = parts.score(engine, day, model)
        entering, entry = admit_entries(engine, scored, plan, day)
        sample = drift_sample(scored)
    uplift_model = for_plan(engine, plan)  # only when a rule uses uplift_score
    if uplift_model is not None:
        scored = uplift_scores(scored, uplift_model)
    # "warn" (default) or "stop" when a score or key feature drifted far (PSI > 0.25) from training
    drift(scored[sample], model, policy=getattr(plan, "drift_policy", "warn"), playbook=plan.name,
          customers=entry["customers"])
    selected, counts = segment(scored[entering], plan, day, entry)
    if window_start and window_end and plan.trigger:
        selected, counts = triggered(engine, selected, counts, plan, window_start, window_end)
    version = model.version if model else None
    steps = Steps(plan.name, day)
    # Independent branches: a failed step skips what depends on it, not the rest; the run then fails
    # naming the step, after publishing what was done. A rerun resumes: the ledger repeats nothing sent.
    def allocated() -> Any:  # the consents nobody in a tier's segments holds go to the summary (tasks/allocate.py)
        out = allocate(selected, plan, day, engine, control=config.control_group)
        counts["consent_gaps"] = out.attrs.get("consent_gaps", [])
        return out

    result = steps.run("dispatch", lambda: (parts.dispatch if parts else dispatch)(
        reasons(allocated(), model, plan), plan, day,
        engine=engine, config=config, run_id=str(flow_run.id), model_version=version, dry_run=dry_run),
        default=DispatchResult())
    if not dry_run:
        steps.run("enter journeys", lambda: enter_journeys(engine, plan, day), after=["dispatch"])
    follow = steps.run("follow-ups", lambda: follow_ups(scored, plan, day, engine=engine, config=config,
                                                         run_id=str(flow_run.id), model_version=version,
                                                         dry_run=dry_run), default={})
    # touches this playbook deferred earlier (quiet hours) whose time has come go out now too (live runs only:
    # a replay of a past day leaves its deferrals to `lifecycle deliver`, whose clock can follow theirs)
    live = not dry_run and is_live(plan, day, utcnow().replace(tzinfo=dt.UTC))
    due = steps.run("deliver due", lambda: deliver_due(engine, config, playbook=plan.name)) if live else None
    measured = steps.run("measure", lambda: measure_task(engine, plan, day, fees_of(config), config.defaults.currency),
                         default=None)
    summary = summarize(plan, day, dry_run, counts, result, version, due)
    summary["measured"] = measured
    summary["model_warning"] = model_warning
    summary["currency"] = currency_of(plan, config.defaults.currency)
    summary["follow_ups"] = follow
    summary["failed_steps"], summary["skipped_steps"] = steps.failed, steps.skipped
    # rows no step can hold, left out (or read as unknown / UTC) instead of failing the run: {"orders": 2}
    summary["bad_rows"] = raw.bad_rows if parts is None else left_out(engine)
    if parts is not None:
        summary["execution"] = parts.report()
    _publish(plan, summary)
    steps.raise_if_failed()
    return summary


def run_day(as_of: str) -> dt.date:
    """A run's `as_of` parameter (a deployment's, typed in the UI) as a date lifecycle works with."""
    try:
        day = dt.date.fromisoformat(str(as_of))
    except ValueError:
        raise UsageError(f"as_of {as_of!r} is not a date", hint="give it as YYYY-MM-DD, or leave it out to act on "
                         "the run's scheduled day", code="L349") from None
    problem = date_arg_problem("as_of", day)
    if problem:
        raise UsageError(problem, hint="give a date within that range", code="L349")
    return day


class Steps:
    """Runs a flow's independent steps: a failure is recorded, the steps after it that need it are skipped."""

    def __init__(self, playbook: str, as_of: dt.date) -> None:
        self.playbook, self.as_of = playbook, as_of
        self.failed: dict[str, str] = {}  # step -> what went wrong
        self.skipped: list[str] = []

    def run(self, name: str, fn: Callable[[], Any], *, after: list[str] = (), default: Any = None) -> Any:
        if any(a in self.failed or a in self.skipped for a in after):
            self.skipped.append(name)
            return default
        try:
            return fn()
        except LifecycleError as exc:
            self.failed[name] = mask_secrets_in(f"[{exc.code}] {exc.message}")
        except Exception as exc:  # noqa: BLE001 - recorded and re-raised at the end as a run error
            # an exception's text may quote a URL with its credentials; it reaches the summary, the
            # artifact and the run error's message
            self.failed[name] = mask_secrets_in(f"{type(exc).__name__}: {exc}")
        return default

    def raise_if_failed(self) -> None:
        if not self.failed:
            return
        what = "; ".join(f"{k} failed: {v}" for k, v in self.failed.items())
        skipped = f"; skipped because of it: {', '.join(self.skipped)}" if self.skipped else ""
        raise RunError(f"{self.playbook} on {self.as_of}: {what}{skipped}",
                       hint="fix the cause, then rerun the same playbook and as-of date: touches already "
                            "sent are not repeated and journeys resume where they stopped", code="L603")


def deliver_run_name() -> str:
    """`deliver-due-YYYY-MM-DDTHH:MM` (UTC; `deliver-due-PLAYBOOK-...` for one playbook's), the time the run was
    due: an hourly deployment run is named for its hour however late a worker starts it, as event-relay's are."""
    playbook = flow_run.parameters.get("playbook")
    when = flow_run.scheduled_start_time.astimezone(dt.UTC)
    return f"deliver-due-{Path(str(playbook)).stem + '-' if playbook else ''}{when:%Y-%m-%dT%H:%M}"


@flow(name="deliver-due", persist_result=False, validate_parameters=False, flow_run_name=deliver_run_name)
def deliver_flow(playbook: str | None = None) -> dict[str, Any]:
    """Send the touches quiet hours deferred whose time has come (all playbooks, or one); schedule hourly."""
    due = deliver_due(warehouse(), load_config(), playbook=playbook)
    summary = {"sent": due.sent, "dropped": due.dropped, "failed": due.failed, "retried": due.retried}
    when = flow_run.scheduled_start_time.astimezone(dt.UTC)
    title = f"Deferred touches due{f' ({playbook})' if playbook else ''} at {when:%Y-%m-%d %H:%M} UTC"
    create_markdown_artifact(
        markdown=mask_secrets_in(deliver_markdown(title, due.sent, due.dropped, due.failed, due.retried)),
        key="deliver-due-summary", description="deferred touches delivered")
    return summary


def summarize(plan: Plan, as_of: dt.date, dry_run: bool, counts: dict, result: DispatchResult,
              model_version: str | None, due: DispatchResult | None = None) -> dict[str, Any]:
    return {
        "playbook": plan.name, "version": plan.version, "as_of": as_of.isoformat(), "dry_run": dry_run,
        "plan_hash": plan.plan_hash, "model_version": model_version,
        "flow_run_id": str(flow_run.id), "flow_run_name": flow_run.name,
        **counts,
        "touches": result.sent, "already_sent": result.already_sent, "dropped": result.dropped,
        "deferred": result.deferred, "failed": result.failed, "retried": result.retried,
        "claimed_elsewhere": result.claimed_elsewhere, "holders": result.holders, "taken_over": result.taken_over,
        "offer_cost": result.offer_cost,
        "deferred_sent": due.sent if due else {}, "deferred_dropped": due.dropped if due else {},
        "segment_channel": result.segment_channel, "segment_tier": result.segment_tier,
        "outboxes": {**(due.outboxes if due else {}), **result.outboxes}, "previews": result.previews,
    }


def _publish(plan: Plan, summary: dict[str, Any]) -> None:
    """What ops see on the flow-run page: a readable summary, segment x tier counts and drops by reason."""
    key = plan.name.replace("_", "-")
    lines = [
        f"# {plan.name} on {summary['as_of']}{' (dry run)' if summary['dry_run'] else ''}",
        "",
        f"- plan `{summary['plan_hash']}`, version {plan.version}, model `{summary['model_version'] or 'none'}`",
        f"- {summary['customers']:,} customers; {summary['audience']:,} in the audience;"
        f" {summary['unmatched']:,} matched no segment",
        *("- " + line for line in outcome_lines(summary)),
    ]
    if summary.get("execution"):  # a sharded run: where its shards ran, as the terminal says
        lines.append("- " + describe_report(summary["execution"]).strip())
    measured = summary.get("measured")
    if measured:
        lines += ["", measured["markdown"]]
    if "lifecycle report" not in (measured or {}).get("markdown", ""):  # the measured section names it
        lines += ["", f"Full report: `lifecycle report {plan.name}`"]
    lines += ["", f"One customer's decisions: `lifecycle explain CUSTOMER_ID --playbook {plan.name}`"]
    # outcome_lines masks what it quotes; the whole page once more, as it leaves for the server
    create_markdown_artifact(markdown=mask_secrets_in("\n".join(lines)), key=f"{key}-summary",
                             description="run summary")
    create_table_artifact(table=segment_rows(summary["segments"], summary["segment_tier"]), key=f"{key}-segments",
                          description="customers per segment and tier (with the channel), then those no tier reached")
    if measured and measured.get("table"):
        m = measured.get("measurement") or {}
        rows, description = effect_table(measured["table"], m.get("currency"), m.get("confidence") or 0.95)
        create_table_artifact(table=rows, key=f"{key}-effect", description=description)
    create_table_artifact(table=drop_rows(summary["dropped"], _meaning(plan)), key=f"{key}-drops",
                          description="customers not touched, by reason")


def _meaning(plan: Plan) -> Callable[[str], str | None]:
    """What a drop reason means, as `lifecycle explain` says it (with the plan's cap and quiet hours); None
    for a reason it does not know."""
    return lambda reason: dropped_text(plan, reason) if reason in DROPPED else None


def run_plan(plan: Plan, playbook_path: str, as_of: dt.date, *, dry_run: bool, model_version: str | None,
             window: tuple[dt.datetime, dt.datetime] | None = None, shards: int | None = None,
             dask: str | None = None) -> dict:
    """Run one playbook from this process (Prefect's ephemeral mode unless PREFECT_API_URL is set);
    `shards` / `dask` override lifecycle.yaml's `execution:` (flows/sharded.py)."""
    run_tags = [f"playbook:{plan.name}", f"plan:{plan.plan_hash}"]
    if model_version:
        run_tags.append(f"model:{model_version}")
    if dry_run:
        run_tags.append("dry-run")
    named = playbook_flow.with_options(name=plan.name, flow_run_name=f"{plan.name}-{as_of.isoformat()}")
    if window:
        run_tags.append(f"trigger:{plan.trigger.event if plan.trigger else 'none'}")
    extra = {"window_start": window[0].isoformat(), "window_end": window[1].isoformat()} if window else {}
    extra.update({k: v for k, v in (("shards", shards), ("dask", dask)) if v is not None})
    with tags(*run_tags):
        return named(playbook=playbook_path, as_of=as_of.isoformat(), dry_run=dry_run, **extra)
