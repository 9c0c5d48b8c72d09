"""`lifecycle deploy`: one Prefect deployment per playbook, plus the system ones, on the server in PREFECT_API_URL.

Idempotent: each deployment (see `infra/deploy.py` for what it holds: schedule, parameters, the
playbook's event trigger) is created, updated or left unchanged by comparing it, and the automation
its trigger is kept as, with what the server has; deployments whose playbook file is gone (or a
relay no playbook needs) are reported, and deleted with `--prune`. Also the run-time helpers a
deployment run needs (its run name, its default as-of date, its tags), which `flows/build.py` uses.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from flows.compiler import compile_file
from flows.plan import Plan
from infra import deploy
from infra.errors import AuthorError, ConfigError, WarehouseError
from infra.redact import mask_url
from infra.settings import REPO_ROOT, load_config

SERVER_HINT = ("start one with `lifecycle ui` (a local server on 127.0.0.1:4200) or `docker compose -f "
               "infra/compose.yaml up -d` (PostgreSQL + Prefect server for a team), then "
               "`export PREFECT_API_URL=http://127.0.0.1:4200/api`")


# ---- run time: what a deployment run needs before its flow body starts -------------------------

def default_as_of(plan: Plan) -> dt.date:
    """The day a run without `as_of` acts on: its scheduled start, in the schedule's timezone (else UTC).

    The scheduled start (not the clock) keeps a late-starting 23:59 run on its own day.
    """
    from prefect.runtime import flow_run

    return plan.local_day(flow_run.scheduled_start_time or dt.datetime.now(dt.UTC))


def run_name() -> str:
    """`PLAYBOOK-ASOF` for a run started from a deployment (run_plan names in-process runs itself)."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    as_of = params.get("as_of")
    if not as_of:
        as_of = default_as_of(compile_file(params["playbook"], load_config())).isoformat()
    return f"{Path(params['playbook']).stem}-{as_of}"


def tag_run(plan: Plan, model: Any, *, triggered: bool) -> None:
    """Give a deployment's run the tags an in-process run gets from `run_plan`: `model:<version>` and,
    when an event window started it, `trigger:<event>`. One API call at most; never fails the run."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx else None
    want = ([f"model:{model.version}"] if model is not None else []) + \
           ([f"trigger:{plan.trigger.event}"] if triggered and plan.trigger else [])
    missing = [t for t in want if run is not None and t not in (run.tags or [])]
    if not missing:
        return
    try:
        from prefect import get_client

        with get_client(sync_client=True) as client:
            client.update_flow_run(run.id, tags=[*run.tags, *missing])
        run.tags = [*run.tags, *missing]
    except Exception as exc:  # noqa: BLE001 - a missing tag is not worth a failed run
        from prefect.logging import get_run_logger

        get_run_logger().warning("could not add tags %s to this run (%s)", missing, type(exc).__name__)


# ---- the command --------------------------------------------------------------------------------

def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ConfigError("deployments need a Prefect server, and PREFECT_API_URL is not set",
                          hint=SERVER_HINT, code="L206")
    return url


def _compile_all(paths: list[Path], config_path: str | None) -> list[tuple[Plan, Path]]:
    """Every playbook compiled before anything is deployed: one broken file deploys nothing."""
    config = load_config(config_path)
    plans, problems = [], []
    for path in paths:
        try:
            plans.append((compile_file(path, config), path))
        except AuthorError as exc:
            problems.append(exc.render())
    if problems:
        raise AuthorError(f"{len(problems)} playbook(s) do not compile; nothing was deployed",
                          hint="fix them (`lifecycle check` lists every problem) and deploy again",
                          problems=problems)
    return plans


def _ensure_pool(client: Any, name: str) -> str:
    """The work pool, created as a process pool when missing; returns what happened to it."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(name=name, type=deploy.POOL_TYPE,
                                               base_job_template=ProcessWorker.get_default_base_job_template()))
        return f"work pool '{name}' ({deploy.POOL_TYPE}): created"
    note = "" if pool.type == deploy.POOL_TYPE else f" (type {pool.type}: its workers must be able to run " \
                                                    f"{deploy.ENTRYPOINT} in the project directory)"
    return f"work pool '{name}' ({pool.type}): exists{note}"


def _managed(client: Any) -> dict[str, Any]:
    """Deployments `lifecycle deploy` made (playbooks and system flows), by name."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    known = {deploy.ENTRYPOINT} | {f.entrypoint for f in deploy.SYSTEM_FLOWS}
    found = client.read_deployments(deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[deploy.MANAGED_TAG])))
    return {d.name: d for d in found if d.entrypoint in known}


def _owner(deployment_id: Any) -> str:
    return f"prefect.deployment.{deployment_id}"


def _flow_schema(entrypoint: str) -> dict[str, Any]:
    """The parameter schema of the flow at `entrypoint` (imports its module: the tasks, so only once a server answers)."""
    import importlib

    from prefect.utilities.callables import parameter_schema

    path, name = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return parameter_schema(getattr(module, name)).model_dump_for_openapi()


def _apply(client: Any, spec: deploy.DeploymentSpec, schema: dict[str, Any]) -> Any:
    """Create or replace the deployment (an upsert: keeps its id, replaces its schedules); returns its id."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.exceptions import PrefectHTTPStatusError

    flow_id = client.create_flow_from_name(spec.name)
    try:
        return client.create_deployment(
            flow_id=flow_id, name=spec.name, version=spec.version, description=spec.description,
            work_pool_name=spec.work_pool, entrypoint=spec.entrypoint, parameters=spec.parameters,
            job_variables=spec.job_variables, pull_steps=spec.pull_steps, tags=list(spec.tags),
            parameter_openapi_schema=schema,
            schedules=[DeploymentScheduleCreate(schedule=CronSchedule(cron=cron, timezone=tz), active=True)
                       for cron, tz in spec.schedules],
            concurrency_limit=spec.concurrency,
            concurrency_options=ConcurrencyOptions(collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
            if spec.concurrency else None,
        )
    except PrefectHTTPStatusError as exc:
        detail = exc.response.text[:300]
        raise ConfigError(f"the Prefect server refused the deployment {spec.full_name}: {detail}",
                          hint=f"a work pool '{spec.work_pool}' of another type may not accept working_dir; "
                               "deploy to a process pool with --pool NAME", code="L208") from None


def _apply_triggers(client: Any, deployment_id: Any, spec: deploy.DeploymentSpec) -> None:
    """Replace the automations the deployment owns with the spec's triggers (Prefect's own way for
    deployment triggers: they have no identity to update, so they are deleted and made again)."""
    from prefect.events import DeploymentEventTrigger

    client.delete_resource_owned_automations(_owner(deployment_id))
    for t in spec.triggers:
        trigger = DeploymentEventTrigger(
            name=t.name, description=f"Runs {spec.full_name} for each window of new events the event relay emits.",
            enabled=True, expect={t.event}, match={"prefect.resource.id": t.resource}, posture="Reactive",
            threshold=1, within=0, parameters=dict(t.parameters))
        trigger.set_deployment_id(deployment_id)
        client.create_automation(trigger.as_automation())


def _require_secret(client: Any, name: str) -> None:
    """--db-secret names a Secret block the worker will read; it must exist before anything runs."""
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_block_document_by_name(name, block_type_slug="secret", include_secrets=False)
    except ObjectNotFound:
        raise ConfigError(f"no Secret block '{name}' on the Prefect server", code="L209",
                          hint="create it in the UI (Blocks > Secret) or with `python -c \"from prefect.blocks.system "
                               f"import Secret; Secret(value='postgresql://...').save('{name}')\"`") from None


def _check_warehouse(url: str, plans: list[tuple[Plan, Path]]) -> str:
    """--db: the warehouse the workers will use has lifecycle's tables and the models the playbooks need.

    Only this process looks at it; the deployments still name no URL (the workers bring their own).
    """
    from infra.errors import ModelError
    from infra.warehouse.db import current_revision, display_url, head_revision, open_warehouse
    from models import registry

    engine = open_warehouse(url)
    try:
        where = mask_url(display_url(url))
        revision = current_revision(engine)
        if revision is None:
            raise WarehouseError(f"the warehouse at {where} has no lifecycle tables yet; runs on it would fail",
                                 hint="run `lifecycle db upgrade --db URL` (or import or generate data) first",
                                 code="L405")
        needed: dict[str, list[str]] = {}
        for plan, _ in plans:
            if plan.model:
                needed.setdefault(plan.model, []).append(plan.name)
        found = {name: registry.latest(engine, name) for name in sorted(needed)}
        missing = [name for name, model in found.items() if model is None]
        if missing:
            raise ModelError(
                f"no trained {', '.join(repr(m) for m in missing)} model in the warehouse at {where}; "
                f"needed by {', '.join(sorted(p for m in missing for p in needed[m]))}",
                hint="run `lifecycle model train --db URL` before their first run", code="L501")
    finally:
        engine.dispose()
    schema = "current" if revision == head_revision() else f"at {revision}; the first run upgrades it"
    models = ", ".join(f"{n} {m.version}" for n, m in found.items()) or "none needed"
    return f"warehouse {where} (checked here only; deployments name no URL): schema {schema}; models: {models}"


def _when(spec: deploy.DeploymentSpec) -> str:
    if spec.system:
        return f"{next(f.every for f in deploy.SYSTEM_FLOWS if f.name == spec.name)} (cron '{spec.cron}' {spec.timezone})"
    when = (f"cron '{spec.cron}' {spec.timezone}" if spec.cron
            else f"no schedule: runs on demand only (Run in the UI, or `prefect deployment run '{spec.full_name}'`)")
    for t in spec.triggers:
        when += f"; and on each {t.event} event (trigger)"
    return when


def deploy_cmd(args: argparse.Namespace) -> int:
    """Create, update or leave unchanged one deployment per playbook and the system ones; report (or prune) stale ones."""
    from flows.commands import _playbook_paths

    url = _api_url()
    plans = _compile_all(_playbook_paths(args.playbooks), args.config)
    workdir = Path(args.workdir).absolute() if args.workdir else REPO_ROOT
    specs = [deploy.build_spec(plan, path, project_root=REPO_ROOT, workdir=workdir, work_pool=args.pool,
                               db_secret=args.db_secret)
             for plan, path in plans]
    for spec in specs:
        if deploy.reserved(spec.name):
            raise ConfigError(f"playbook {spec.playbook} is named '{spec.name}', the name of a system deployment",
                              hint="give the playbook another `name:` (and file name)", code="L210")
    checked = _check_warehouse(args.db, plans) if args.db else (
        "warehouse: not checked (`--db URL` checks the workers' warehouse has the tables and models the runs need)")

    from prefect import get_client

    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
        if problem is not None:
            raise ConfigError(f"no Prefect server answers at {mask_url(url)} ({type(problem).__name__})",
                              hint="check PREFECT_API_URL (it ends in /api), or " + SERVER_HINT, code="L207")
        if args.db_secret:
            _require_secret(client, args.db_secret)
        print(f"Prefect server: {mask_url(url)}")
        print(checked)
        print(_ensure_pool(client, args.pool))
        managed = _managed(client)
        automations = {name: deploy.owned(client.read_resource_related_automations(_owner(d.id)))
                       for name, d in managed.items()}
        wanted = {s.name for s in specs}

        def gone_playbook(d: Any) -> bool:
            return deploy.stale(str((d.parameters or {}).get("playbook", "")), REPO_ROOT)

        # the relay serves every deployed playbook with a trigger: these, and those deployed before
        triggered = [s.playbook for s in specs if s.triggers] + [
            d.parameters["playbook"] for name, d in managed.items()
            if d.entrypoint == deploy.ENTRYPOINT and name not in wanted and automations[name] and not gone_playbook(d)]
        system = deploy.system_specs(triggered, workdir=workdir, work_pool=args.pool, db_secret=args.db_secret)
        schemas: dict[str, dict[str, Any]] = {}
        print("Playbooks:")
        for spec in specs + system:
            if spec is (system[0] if system else None):
                print("System flows:")
            if spec.entrypoint not in schemas:
                schemas[spec.entrypoint] = _flow_schema(spec.entrypoint)
            current = managed.get(spec.name)
            changed = None
            if current is not None:
                changed = deploy.differences(spec, deploy.server_fields(current, automations=automations[spec.name]))
                if current.parameter_openapi_schema != schemas[spec.entrypoint]:
                    changed.append("parameter schema")
            if current is None or changed:
                deployment_id = _apply(client, spec, schemas[spec.entrypoint])
                if (current is None and spec.triggers) or (changed and "triggers" in changed):
                    _apply_triggers(client, deployment_id, spec)
            status = "created" if current is None else f"updated ({', '.join(changed)})" if changed else "unchanged"
            what = f"plan {spec.version.split('+')[-1]}" if not spec.system else spec.purpose
            print(f"  {spec.full_name}: {status}; {_when(spec)}; {what}")
        keep = wanted | {s.name for s in system}
        for name, d in sorted(managed.items()):
            if name in keep or (d.entrypoint == deploy.ENTRYPOINT and not gone_playbook(d)):
                continue
            why = (f"playbook {(d.parameters or {}).get('playbook')} no longer exists" if d.entrypoint == deploy.ENTRYPOINT
                   else "no deployed playbook has a trigger" if d.entrypoint == deploy.RELAY.entrypoint
                   else "not a system flow of this version")
            if args.prune:
                client.delete_resource_owned_automations(_owner(d.id))
                client.delete_deployment(d.id)
                print(f"  {d.name}/{d.name}: removed ({why})")
            else:
                print(f"  {d.name}/{d.name}: stale: {why}; `lifecycle deploy --prune` removes it")
    where = "; LIFECYCLE_DB_URL comes from the Secret block " + repr(args.db_secret) if args.db_secret else ""
    print(f"Runs start when a worker polls the pool: `prefect worker start --pool {args.pool}` in {workdir}, with "
          f"PREFECT_API_URL and the warehouse settings (LIFECYCLE_DB_URL, LIFECYCLE_CONFIG, LIFECYCLE_HOME) in its "
          f"environment{where}.")
    if any(s.triggers for s in specs) or triggered:
        print("Event-triggered playbooks run within about 90 s of their events, plus two run starts: the "
              "event-relay deployment reads the warehouse every minute (events older than 30 s), and the trigger "
              "then starts the playbook's run on a worker.")
    return 0


def add_arguments(sub: Any) -> None:
    """The `deploy` subcommand's arguments (registered by flows/cli.py)."""
    p = sub.add_parser("deploy", help="create or update the Prefect deployments: one per playbook, plus the event "
                       "relay, deferred delivery and weekly KPIs (server in PREFECT_API_URL)",
                       description="Create, update or leave unchanged one Prefect deployment per playbook (its cron "
                       "and timezone; for a playbook with a trigger, a deployment trigger on lifecycle.<event> that "
                       "passes the event window to the run) and the system deployments: event-relay (every minute, "
                       "while a playbook has a trigger), deliver-due (hourly) and kpis (Mondays 08:00). Running it "
                       "twice changes nothing.")
    p.add_argument("playbooks", nargs="*", metavar="PLAYBOOKS",
                   help="playbook files, folders or shipped names (default: every playbook in playbooks/)")
    p.add_argument("--pool", default=deploy.DEFAULT_POOL,
                   help=f"work pool the runs go to; created as a process pool if missing (default {deploy.DEFAULT_POOL})")
    p.add_argument("--prune", action="store_true",
                   help="delete deployments whose playbook file no longer exists (and a relay nothing needs)")
    p.add_argument("--workdir", metavar="DIR",
                   help="project directory as the worker sees it (default: this checkout)")
    p.add_argument("--db-secret", metavar="BLOCK",
                   help="take LIFECYCLE_DB_URL from this Prefect Secret block at run time instead of the "
                        "worker's environment")
    p.add_argument("--db", metavar="URL",
                   help="check this warehouse (the one the workers use) before deploying: lifecycle's tables and "
                        "the trained models the playbooks need. Only this command connects to it; the deployments "
                        "never hold a URL (workers bring LIFECYCLE_DB_URL, or use --db-secret). Default: no check")
    p.add_argument("--config", metavar="FILE", help="project config used to compile the playbooks "
                   "(default: LIFECYCLE_CONFIG, then ./lifecycle.yaml)")
