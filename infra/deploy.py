"""The deployment definitions: one Prefect deployment per playbook, built from its compiled plan, and the system ones.

Pure: no Prefect client, no network. `flows/deploycmd.py` compares these specs with what a server
holds and creates, updates or removes deployments; here is only *what* a deployment must say.

A deployment carries what a worker needs to run the playbook and nothing secret:

- entrypoint `flows/build.py:playbook_flow`, run in `workdir` (the project checkout as the worker
  sees it, by default this one; a pull step changes into it, and the process worker starts there);
- parameters: the playbook's path (relative to the project when inside it) and `dry_run`; `as_of` is
  left out, so each run acts on "today" in the schedule's timezone;
- the schedule: the playbook's cron and timezone, or none (runs on demand only);
- environment *by reference*: the worker's own LIFECYCLE_DB_URL, LIFECYCLE_CONFIG and LIFECYCLE_HOME
  pass through to the flow process (a process worker hands its environment on); with `db_secret`
  the deployment names a Prefect Secret block that the worker resolves when the run starts. A
  connection string is never written into the deployment;
- for a playbook with `trigger: {event: T}`, a deployment trigger: each Prefect event `lifecycle.T`
  (one per window of new warehouse events, emitted by the event relay) starts a run with the window's
  `window_start`/`window_end` from the event payload, so the run touches only who produced the events.

Next to the playbooks, the system deployments every installation needs (`system_specs`): the event
relay every minute (only while some deployed playbook has a trigger), deferred touches hourly and the
weekly KPI report. All are tagged `lifecycle`; `deploy` compares, updates and prunes them alike.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

ENTRYPOINT = "flows/build.py:playbook_flow"
MANAGED_TAG = "lifecycle"  # marks the deployments `lifecycle deploy` owns (and may prune)
SYSTEM_TAG = "system"  # ... and among them the ones that are not playbooks
DEFAULT_POOL = "lifecycle"
POOL_TYPE = "process"
# What the flow process reads from its environment; the worker provides these.
ENV_PASSTHROUGH = ("LIFECYCLE_DB_URL", "LIFECYCLE_CONFIG", "LIFECYCLE_HOME")
# The Prefect events the relay emits (tasks/events.py `emit_window`): name and resource per event type.
EVENT_PREFIX = "lifecycle."
RESOURCE_PREFIX = "lifecycle.event-type."
TRIGGER_PREFIX = "lifecycle: "  # names the automations deploy owns (others on the deployment are left alone)
WINDOW_PARAMETERS = {"window_start": "{{ event.payload.window_start }}",
                     "window_end": "{{ event.payload.window_end }}"}


class _Schedule(Protocol):
    cron: str
    timezone: str


class _Trigger(Protocol):
    event: str


class PlanLike(Protocol):
    """The parts of a compiled `flows.plan.Plan` a deployment needs (infra imports no other room)."""

    name: str
    version: str
    description: str
    plan_hash: str
    schedule: _Schedule | None
    trigger: _Trigger | None


@dataclass(frozen=True)
class EventTrigger:
    """A deployment trigger: every Prefect event `event` about `resource` starts a run with `parameters`.

    Prefect keeps it as an automation owned by the deployment (trigger + a run-deployment action);
    the parameters are Jinja templates the server fills from the event.
    """

    name: str
    event: str  # the Prefect event name, `lifecycle.order.placed`
    resource: str  # its resource id, `lifecycle.event-type.order.placed`
    parameters: dict[str, Any]

    def fields(self) -> dict[str, Any]:
        """The comparable state, in the shape `automation_fields` reads back from a server."""
        return {"name": self.name, "enabled": True, "expect": [self.event],
                "match": {"prefect.resource.id": self.resource}, "posture": "Reactive", "threshold": 1,
                "within": 0.0, "action": "run-deployment", "parameters": dict(self.parameters)}


def event_trigger(deployment: str, event_type: str) -> EventTrigger:
    """The trigger that runs `deployment` for each window of `event_type` events the relay emits."""
    return EventTrigger(name=f"{TRIGGER_PREFIX}run {deployment} on {EVENT_PREFIX}{event_type}",
                        event=EVENT_PREFIX + event_type, resource=RESOURCE_PREFIX + event_type,
                        parameters=dict(WINDOW_PARAMETERS))


@dataclass(frozen=True)
class DeploymentSpec:
    """Everything `lifecycle deploy` sets on one deployment; `fields()` is what it compares."""

    name: str  # flow name and deployment name alike: the playbook's, or a system flow's
    playbook: str | None  # the path parameter, as the worker will open it (None: a system flow)
    workdir: str
    work_pool: str
    cron: str | None
    timezone: str | None
    version: str
    description: str
    tags: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: str = ENTRYPOINT
    extra_parameters: dict[str, Any] | None = None  # a system flow's parameters (a playbook's are fixed)
    triggers: tuple[EventTrigger, ...] = ()
    concurrency: int | None = None  # at most this many runs at once; a run beyond it is cancelled
    purpose: str = ""  # one line for `deploy`'s output

    @property
    def full_name(self) -> str:
        return f"{self.name}/{self.name}"

    @property
    def system(self) -> bool:
        return self.playbook is None

    @property
    def parameters(self) -> dict[str, Any]:
        if self.playbook is None:
            return dict(self.extra_parameters or {})
        return {"playbook": self.playbook, "dry_run": False}

    @property
    def concurrency_fields(self) -> dict[str, Any] | None:
        return {"limit": self.concurrency, "collision_strategy": "CANCEL_NEW"} if self.concurrency else None

    @property
    def job_variables(self) -> dict[str, Any]:
        jv: dict[str, Any] = {"working_dir": self.workdir}
        if self.env:
            jv["env"] = dict(self.env)
        return jv

    @property
    def pull_steps(self) -> list[dict[str, Any]]:
        return [{"prefect.deployments.steps.set_working_directory": {"directory": self.workdir}}]

    @property
    def schedules(self) -> list[tuple[str, str]]:
        return [(self.cron, self.timezone)] if self.cron and self.timezone else []

    def fields(self) -> dict[str, Any]:
        """The comparable state, in the same shape `server_fields` reads back from a server."""
        return {
            "entrypoint": self.entrypoint, "work_pool": self.work_pool, "parameters": self.parameters,
            "job_variables": self.job_variables, "pull_steps": self.pull_steps,
            "schedules": self.schedules, "tags": sorted(self.tags), "version": self.version,
            "description": self.description, "concurrency": self.concurrency_fields,
            "triggers": sorted((t.fields() for t in self.triggers), key=lambda t: t["name"]),
        }


def playbook_parameter(path: Path, project_root: Path) -> str:
    """The playbook path as the worker opens it: relative to the project (its working directory) when inside it."""
    path = path.resolve()
    try:
        return path.relative_to(project_root.resolve()).as_posix()
    except ValueError:
        return str(path)


def build_spec(plan: PlanLike, path: Path, *, project_root: Path, workdir: Path | str | None = None,
               work_pool: str = DEFAULT_POOL, db_secret: str | None = None) -> DeploymentSpec:
    """The deployment for one compiled playbook; `workdir` is the project root as the worker sees it."""
    schedule = plan.schedule
    when = f"cron '{schedule.cron}' ({schedule.timezone})" if schedule else "no schedule: on demand only"
    trigger = getattr(plan, "trigger", None)
    if trigger is not None:
        when += (f"; also on each window of new '{trigger.event}' events (Prefect event {EVENT_PREFIX}{trigger.event}"
                 f" from the event-relay deployment), for the customers who produced them")
    description = (f"{plan.description.strip()}\n\nPlaybook {path.name} v{plan.version} (plan {plan.plan_hash}); "
                   f"{when}. {_environment(db_secret)}")
    return DeploymentSpec(
        name=plan.name, playbook=playbook_parameter(path, project_root),
        workdir=str(workdir or project_root.resolve()),
        work_pool=work_pool, cron=schedule.cron if schedule else None,
        timezone=schedule.timezone if schedule else None,
        version=f"{plan.version}+{plan.plan_hash}", description=description,
        tags=(MANAGED_TAG, f"playbook:{plan.name}", f"plan:{plan.plan_hash}"), env=_env(db_secret),
        triggers=(event_trigger(plan.name, trigger.event),) if trigger is not None else (),
        purpose=f"playbook {path.name}",
    )


def _env(db_secret: str | None) -> dict[str, str]:
    """Environment by reference only: a Secret block the worker resolves, or nothing (its own environment)."""
    return {"LIFECYCLE_DB_URL": "{{ prefect.blocks.secret.%s }}" % db_secret} if db_secret else {}


def _environment(db_secret: str | None) -> str:
    needs = ", ".join(n for n in ENV_PASSTHROUGH if not (db_secret and n == "LIFECYCLE_DB_URL"))
    return (f"Deployed by `lifecycle deploy`; the worker provides {needs} from its environment"
            + (f", LIFECYCLE_DB_URL from Secret block '{db_secret}'." if db_secret else "."))


# ---- the system deployments: what runs next to the playbooks -----------------------------------

@dataclass(frozen=True)
class SystemFlow:
    """A flow every installation deploys once, whatever its playbooks (names have a '-' or are reserved)."""

    name: str  # flow name and deployment name
    entrypoint: str
    cron: str
    timezone: str
    every: str  # the schedule in words
    purpose: str
    concurrency: int | None = None


RELAY = SystemFlow(
    "event-relay", "flows/relay.py:relay_flow", "* * * * *", "UTC", "every minute",
    "hands new trigger events in the warehouse to the triggered playbooks: one Prefect event "
    "lifecycle.<type> per window, which their deployment triggers turn into runs", concurrency=1)
DELIVER = SystemFlow(
    "deliver-due", "flows/build.py:deliver_flow", "0 * * * *", "UTC", "hourly",
    "sends the touches quiet hours deferred, once their time has come (all playbooks)", concurrency=1)
KPIS = SystemFlow(
    "kpis", "flows/kpiflow.py:kpi_flow", "0 8 * * 1", "Asia/Shanghai", "Mondays 08:00 Asia/Shanghai",
    "the weekly customer KPI report (actives, orders, revenue, cohorts) as run artifacts and HTML")
SYSTEM_FLOWS = (RELAY, DELIVER, KPIS)


def system_specs(triggered: list[str], *, workdir: Path | str, work_pool: str = DEFAULT_POOL,
                 db_secret: str | None = None) -> list[DeploymentSpec]:
    """The system deployments; the relay (given the paths of the deployed playbooks with a trigger) only if any."""
    specs = []
    for flow in SYSTEM_FLOWS:
        parameters: dict[str, Any] = {}
        purpose = flow.purpose
        if flow is RELAY:
            if not triggered:
                continue
            parameters = {"playbooks": sorted(set(triggered)), "mode": "emit"}
            purpose += f" ({', '.join(Path(p).stem for p in parameters['playbooks'])})"
        digest = hashlib.sha256(json.dumps([flow.entrypoint, parameters, flow.cron, flow.timezone],
                                           sort_keys=True).encode()).hexdigest()[:12]
        description = (f"{purpose[0].upper()}{purpose[1:]}. Runs {flow.every} (cron '{flow.cron}' {flow.timezone})"
                       + (f", at most {flow.concurrency} at a time (a run that would overlap is cancelled)"
                          if flow.concurrency else "") + f". {_environment(db_secret)}")
        specs.append(DeploymentSpec(
            name=flow.name, playbook=None, workdir=str(workdir), work_pool=work_pool, cron=flow.cron,
            timezone=flow.timezone, version=f"system+{digest}", description=description,
            tags=(MANAGED_TAG, SYSTEM_TAG), env=_env(db_secret), entrypoint=flow.entrypoint,
            extra_parameters=parameters, concurrency=flow.concurrency, purpose=purpose,
        ))
    return specs


def reserved(name: str) -> bool:
    """A playbook may not take a system deployment's name (they would share a flow and deployment)."""
    return name in {f.name for f in SYSTEM_FLOWS}


def automation_fields(automation: Any, deployment_id: Any) -> dict[str, Any]:
    """A server's automation (Prefect's `Automation`) in the shape of `EventTrigger.fields()`."""
    trigger = automation.trigger
    actions = list(automation.actions or [])
    action = actions[0] if len(actions) == 1 else None
    runs_this = (action is not None and getattr(action, "type", None) == "run-deployment"
                 and getattr(action, "source", "selected") == "selected"
                 and str(getattr(action, "deployment_id", None)) == str(deployment_id))
    match = getattr(trigger, "match", None)
    within = getattr(trigger, "within", None)
    posture = getattr(trigger, "posture", None)
    return {
        "name": automation.name, "enabled": automation.enabled, "expect": sorted(getattr(trigger, "expect", None) or []),
        "match": dict(getattr(match, "root", match) or {}), "posture": getattr(posture, "value", posture),
        "threshold": getattr(trigger, "threshold", None),
        "within": within.total_seconds() if hasattr(within, "total_seconds") else within,
        "action": "run-deployment" if runs_this else "other",
        "parameters": dict(getattr(action, "parameters", None) or {}) if action is not None else {},
    }


def owned(automations: list[Any]) -> list[Any]:
    """The automations on a deployment that `deploy` made (by name); ones made by hand are left alone."""
    return [a for a in automations if str(a.name).startswith(TRIGGER_PREFIX)]


def server_fields(deployment: Any, work_pool: str | None = None, automations: list[Any] = ()) -> dict[str, Any]:
    """A server's deployment (Prefect's `DeploymentResponse`, and the automations related to it) in the
    shape of `DeploymentSpec.fields()`."""
    limit = getattr(getattr(deployment, "global_concurrency_limit", None), "limit", None)
    strategy = getattr(getattr(deployment, "concurrency_options", None), "collision_strategy", None)
    schedules = sorted(
        (s.schedule.cron, s.schedule.timezone) for s in deployment.schedules
        if getattr(s.schedule, "cron", None) and s.active
    )
    inactive = [s for s in deployment.schedules if not getattr(s.schedule, "cron", None) or not s.active]
    return {
        "entrypoint": deployment.entrypoint, "work_pool": work_pool or deployment.work_pool_name,
        "parameters": dict(deployment.parameters or {}), "job_variables": dict(deployment.job_variables or {}),
        "pull_steps": list(deployment.pull_steps or []),
        # an inactive or non-cron schedule is a difference too: deploy puts back what the playbook says
        "schedules": schedules + [("other", str(s.id)) for s in inactive],
        "tags": sorted(deployment.tags or []), "version": deployment.version,
        "description": deployment.description,
        "concurrency": {"limit": limit, "collision_strategy": getattr(strategy, "value", strategy) or "ENQUEUE"}
        if limit else None,
        "triggers": sorted((automation_fields(a, deployment.id) for a in owned(list(automations))),
                           key=lambda t: t["name"]),
    }


def differences(spec: DeploymentSpec, current: dict[str, Any]) -> list[str]:
    """Names of the fields whose value on the server differs from the spec (empty: unchanged)."""
    want = spec.fields()
    return [k for k in want if want[k] != current.get(k)]


def stale(deployment_playbook: str, project_root: Path) -> bool:
    """A managed deployment is stale when the playbook file it runs no longer exists."""
    path = Path(deployment_playbook)
    return not (path if path.is_absolute() else project_root / path).is_file()

