"""The deployment definition, without a server: what each playbook's deployment (and its event trigger)
and each system deployment says, and when one changed."""

from __future__ import annotations

import datetime as dt
import importlib
from types import SimpleNamespace

from flows.commands import shipped_playbooks
from flows.compiler import compile_file
from infra import deploy
from infra.settings import REPO_ROOT, SHIPPED_PLAYBOOKS, load_config


def _spec(name="churn_winback", **kw):
    path = SHIPPED_PLAYBOOKS / f"{name}.yaml"
    return deploy.build_spec(compile_file(path, load_config()), path, project_root=REPO_ROOT, **kw)


def test_every_shipped_playbook_gets_a_runnable_deployment():
    for path in shipped_playbooks():
        plan = compile_file(path, load_config())
        spec = deploy.build_spec(plan, path, project_root=REPO_ROOT)
        assert spec.full_name == f"{plan.name}/{plan.name}"
        assert spec.fields()["entrypoint"] == "flows/build.py:playbook_flow"
        assert spec.parameters == {"playbook": f"playbooks/{path.name}", "dry_run": False}  # as_of: the run's day
        assert spec.job_variables == {"working_dir": str(REPO_ROOT)}
        assert (REPO_ROOT / spec.playbook).is_file()
        assert spec.schedules == ([(plan.schedule.cron, plan.schedule.timezone)] if plan.schedule else [])
        assert {"lifecycle", f"playbook:{plan.name}", f"plan:{plan.plan_hash}"} == set(spec.tags)
        assert [t.event for t in spec.triggers] == ([f"lifecycle.{plan.trigger.event}"] if plan.trigger else [])


def test_no_secret_in_a_deployment_only_a_reference():
    spec = _spec(db_secret="warehouse-url")
    assert spec.job_variables["env"] == {"LIFECYCLE_DB_URL": "{{ prefect.blocks.secret.warehouse-url }}"}
    assert "Secret block 'warehouse-url'" in spec.description
    assert "env" not in _spec().job_variables  # the worker's own environment passes through


def test_a_playbook_without_a_schedule_is_deployed_on_demand():
    plan = compile_file(SHIPPED_PLAYBOOKS / "churn_winback.yaml", load_config())
    unscheduled = plan.model_copy(update={"schedule": None})
    spec = deploy.build_spec(unscheduled, SHIPPED_PLAYBOOKS / "churn_winback.yaml", project_root=REPO_ROOT)
    assert spec.schedules == [] and "no schedule: on demand only" in spec.description


def test_a_playbook_outside_the_project_keeps_its_absolute_path(tmp_path):
    path = tmp_path / "elsewhere.yaml"
    assert deploy.playbook_parameter(path, REPO_ROOT) == str(path.resolve())
    assert deploy.build_spec(compile_file(SHIPPED_PLAYBOOKS / "birthday_care.yaml", load_config()),
                             SHIPPED_PLAYBOOKS / "birthday_care.yaml", project_root=REPO_ROOT,
                             workdir="/app").workdir == "/app"


def _as_on_server(spec: deploy.DeploymentSpec, **changes):
    """What a Prefect server would give back for a deployment made from `spec`, with `changes`."""
    schedules = [SimpleNamespace(id="s1", active=True, schedule=SimpleNamespace(cron=c, timezone=tz))
                 for c, tz in spec.schedules]
    limit = SimpleNamespace(limit=spec.concurrency) if spec.concurrency else None
    options = SimpleNamespace(collision_strategy=SimpleNamespace(value="CANCEL_NEW")) if spec.concurrency else None
    fields = dict(id="d1", entrypoint=spec.entrypoint, work_pool_name=spec.work_pool, parameters=spec.parameters,
                  job_variables=spec.job_variables, pull_steps=spec.pull_steps, schedules=schedules,
                  tags=list(reversed(spec.tags)), version=spec.version, description=spec.description,
                  global_concurrency_limit=limit, concurrency_options=options)
    return SimpleNamespace(**{**fields, **changes})


def _automation(trigger: deploy.EventTrigger, deployment_id="d1", **changes):
    """What a server gives back for the automation `deploy` makes from `trigger` (Prefect's shapes, by value)."""
    fields = dict(name=trigger.name, enabled=True, actions=[SimpleNamespace(
        type="run-deployment", source="selected", deployment_id=deployment_id, parameters=dict(trigger.parameters))],
        trigger=SimpleNamespace(expect={trigger.event}, match=SimpleNamespace(root={"prefect.resource.id": trigger.resource}),
                                posture=SimpleNamespace(value="Reactive"), threshold=1, within=dt.timedelta(0)))
    return SimpleNamespace(**{**fields, **changes})


def test_an_unchanged_deployment_has_no_differences_and_each_change_is_named():
    spec = _spec()
    assert deploy.differences(spec, deploy.server_fields(_as_on_server(spec))) == []
    paused = [SimpleNamespace(id="s1", active=False, schedule=SimpleNamespace(cron="0 10 * * *", timezone="Asia/Shanghai"))]
    moved = [SimpleNamespace(id="s1", active=True, schedule=SimpleNamespace(cron="0 11 * * *", timezone="Asia/Shanghai"))]
    for changes, field in [({"schedules": moved}, "schedules"), ({"schedules": paused}, "schedules"),
                           ({"schedules": []}, "schedules"), ({"work_pool_name": "other"}, "work_pool"),
                           ({"parameters": {"playbook": "x.yaml", "dry_run": False}}, "parameters"),
                           ({"job_variables": {"working_dir": "/elsewhere"}}, "job_variables"),
                           ({"tags": ["lifecycle"]}, "tags")]:
        assert deploy.differences(spec, deploy.server_fields(_as_on_server(spec, **changes))) == [field]


def test_stale_means_the_playbook_file_is_gone(tmp_path):
    assert not deploy.stale("playbooks/churn_winback.yaml", REPO_ROOT)
    assert deploy.stale("playbooks/retired.yaml", REPO_ROOT)
    kept = tmp_path / "kept.yaml"
    kept.write_text("name: kept\n")
    assert not deploy.stale(str(kept), REPO_ROOT) and deploy.stale(str(tmp_path / "gone.yaml"), REPO_ROOT)


def test_a_triggered_playbook_runs_on_the_events_the_relay_emits(monkeypatch):
    """The trigger listens for exactly the event name and resource `emit_window` sends, and passes its window on."""
    import prefect.events

    from tasks.events import emit_window

    sent = []
    monkeypatch.setattr(prefect.events, "emit_event", lambda **kw: sent.append(kw))
    emit_window("order.placed", dt.datetime(2026, 7, 1, 9), dt.datetime(2026, 7, 1, 9, 1), 3)
    [event] = sent
    [trigger] = _spec("new_customer_onboarding").triggers
    assert trigger.event == event["event"] and trigger.resource == event["resource"]["prefect.resource.id"]
    assert trigger.parameters == {k: "{{ event.payload.%s }}" % k for k in ("window_start", "window_end")}
    assert set(trigger.parameters) <= set(event["payload"])
    assert "lifecycle.order.placed" in _spec("new_customer_onboarding").description
    assert _spec("churn_winback").triggers == ()


def test_a_trigger_is_compared_like_the_rest_and_hand_made_automations_are_left_alone():
    spec = _spec("new_customer_onboarding")
    [trigger] = spec.triggers
    on_server = _as_on_server(spec)
    hand_made = SimpleNamespace(**{**vars(_automation(trigger)), "name": "page me on orders"})
    assert deploy.differences(spec, deploy.server_fields(on_server, automations=[_automation(trigger), hand_made])) == []
    other = deploy.event_trigger(spec.name, "app.visit")
    for automations in ([], [_automation(trigger, enabled=False)], [_automation(other)],
                        [_automation(trigger, deployment_id="another")], [_automation(trigger), _automation(trigger)],
                        [_automation(trigger, actions=[SimpleNamespace(type="run-deployment", source="selected",
                                                                       deployment_id="d1", parameters={})])]):
        assert deploy.differences(spec, deploy.server_fields(on_server, automations=automations)) == ["triggers"]
    # a playbook whose trigger was removed: the automation deploy made is a difference too
    plain = _spec("churn_winback")
    assert deploy.differences(plain, deploy.server_fields(_as_on_server(plain), automations=[_automation(trigger)])) \
        == ["triggers"]


def test_system_deployments_run_the_relay_only_for_triggered_playbooks():
    none = deploy.system_specs([], workdir=REPO_ROOT)
    assert [s.name for s in none] == ["deliver-due", "kpis"]  # no trigger anywhere: no relay every minute
    specs = {s.name: s for s in deploy.system_specs(
        ["playbooks/new_customer_onboarding.yaml", "playbooks/new_customer_onboarding.yaml"], workdir="/app",
        db_secret="warehouse-url")}
    relay, deliver, kpis = specs["event-relay"], specs["deliver-due"], specs["kpis"]
    assert relay.parameters == {"playbooks": ["playbooks/new_customer_onboarding.yaml"], "mode": "emit"}
    assert (relay.schedules, deliver.schedules, kpis.schedules) == (
        [("* * * * *", "UTC")], [("0 * * * *", "UTC")], [("0 8 * * 1", "Asia/Shanghai")])
    assert relay.concurrency == deliver.concurrency == 1 and kpis.concurrency is None
    assert deliver.parameters == {} and kpis.parameters == {}
    for s in specs.values():
        assert s.system and set(s.tags) == {"lifecycle", "system"} and s.workdir == "/app"
        assert s.job_variables["env"] == {"LIFECYCLE_DB_URL": "{{ prefect.blocks.secret.warehouse-url }}"}
        assert s.purpose and s.purpose.split()[0] in s.description.lower()
        assert deploy.differences(s, deploy.server_fields(_as_on_server(s))) == []
    more = {s.name: s for s in deploy.system_specs(["playbooks/new_customer_onboarding.yaml", "/x/other.yaml"],
                                                   workdir="/app", db_secret="warehouse-url")}
    assert deploy.differences(more["event-relay"], deploy.server_fields(_as_on_server(relay))) == \
        ["parameters", "version", "description"]
    assert more["deliver-due"] == deliver  # the others do not depend on the playbooks
    assert deploy.differences(relay, deploy.server_fields(_as_on_server(relay, global_concurrency_limit=None,
                                                                        concurrency_options=None))) == ["concurrency"]


def test_system_deployments_name_real_flows():
    """Each system deployment's entrypoint is a flow of the same name (infra cannot import them to be sure)."""
    from flows import kpiflow

    for flow in deploy.SYSTEM_FLOWS:
        path, attr = flow.entrypoint.split(":")
        assert (REPO_ROOT / path).is_file()
        assert getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), attr).name == flow.name
    assert (deploy.KPIS.entrypoint, deploy.KPIS.name) == (kpiflow.ENTRYPOINT, kpiflow.NAME)
    assert {"cron": deploy.KPIS.cron, "timezone": deploy.KPIS.timezone} == kpiflow.SCHEDULE


def test_a_playbook_may_not_take_a_system_deployments_name(tmp_path, capsys):
    """A playbook called `kpis` would share the KPI flow's deployment: refused before any server is asked."""
    import shutil

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli import main

    shutil.copytree(SHIPPED_PLAYBOOKS / "templates", tmp_path / "templates")
    text = (SHIPPED_PLAYBOOKS / "birthday_care.yaml").read_text().replace("name: birthday_care", "name: kpis")
    (tmp_path / "kpis.yaml").write_text(text)
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # nothing listens there
        assert main(["deploy", str(tmp_path / "kpis.yaml")]) == 2
    err = capsys.readouterr().err
    assert "error[L210]" in err and "'kpis', the name of a system deployment" in err
