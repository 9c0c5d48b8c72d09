"""A real Prefect server and process worker: `lifecycle deploy`, a deployment run, an event-triggered run,
and what the API shows.

Each test starts `prefect server start` on a free port (its own PREFECT_HOME and database; the
triggers service on, the scheduler off so that only the test starts runs) and `prefect worker start
--pool lifecycle`, both in their own process group, torn down even when the test fails; the same
server and worker serve the scheduled-style run, the relay and the run its event triggers. SQLite
everywhere, then PostgreSQL as both the Prefect server's database and the warehouse (needs
LIFECYCLE_TEST_PG_URL; skipped with the reason otherwise).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import zoneinfo
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from flows.compiler import compile_file
from flows.training import train
from infra.settings import SHIPPED_PLAYBOOKS, load_config
from infra.warehouse.bulk import utcnow
from infra.warehouse.schema import customers, touches
from tests.conftest import END, PG_REASON, REPO, add_first_buyers, make_world

pytestmark = pytest.mark.slow

PLAYBOOK = "churn_winback"
TRIGGERED = "new_customer_onboarding"  # trigger: order.placed
NEW = ["NEW-1", "NEW-2", "NEW-3"]  # customers whose first order arrives during the test
EARLIER = "NEW-0"  # in the onboarding audience too, but its first order came two days ago: not in the window
STEPS = {"extract", "features", "score", "segment", "allocate", "dispatch"}
WINDOW = {"window_start": "{{ event.payload.window_start }}", "window_end": "{{ event.payload.window_end }}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without any Prefect or lifecycle settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LIFECYCLE_"))}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", **extra)
    return env


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path):
    """A child in its own process group; the whole group is stopped on exit, whatever happened."""
    out = log.open("wb")
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        out.close()


def _tail(log: Path, n: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) if log.exists() else "(no log)"


@contextlib.contextmanager
def _server(tmp: Path, database_url: str):
    """`prefect server start` on a free port; yields a function that waits for /api/health and returns the API URL.

    The server takes a while to migrate its database: the caller builds its world meanwhile.
    """
    port = _free_port()
    home = tmp / "prefect-home"
    home.mkdir()
    # the triggers service is on by default; the scheduler is off: the every-minute relay would start on its own
    env = _clean_env(PREFECT_HOME=str(home), PREFECT_API_DATABASE_CONNECTION_URL=database_url,
                     PREFECT_UI_ENABLED="false", PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
                     PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED="true")
    log = tmp / "server.log"
    prefect = str(Path(sys.executable).with_name("prefect"))
    with _process([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log) as proc:
        api = f"http://127.0.0.1:{port}/api"

        def up() -> str:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, f"prefect server exited with {proc.returncode}:\n{_tail(log)}"
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                        return api
                assert time.monotonic() < deadline, f"prefect server not up after 120 s:\n{_tail(log)}"
                time.sleep(0.3)

        yield up


def _worker(tmp: Path, api: str, **env: str):
    """A process worker polling the `lifecycle` pool every second, with `env` as its environment."""
    prefect = str(Path(sys.executable).with_name("prefect"))
    worker_env = _clean_env(PREFECT_API_URL=api, PREFECT_HOME=str(tmp / "worker-home"), PREFECT_WORKER_QUERY_SECONDS="1",
                            PREFECT_WORKER_PREFETCH_SECONDS="1", **env)
    return _process([prefect, "worker", "start", "--pool", "lifecycle", "--name", "test-worker"], worker_env,
                    tmp / "worker.log")


def _deploy(api: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "deploy", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=_clean_env(PREFECT_API_URL=api, **env))


def _client(api: str):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    stack = contextlib.ExitStack()
    stack.enter_context(temporary_settings({PREFECT_API_URL: api}))
    client = stack.enter_context(get_client(sync_client=True))
    return stack, client


def _run_and_check(tmp: Path, api: str, warehouse_url: str, engine, *, worker_env: dict[str, str],
                   deploy_args: tuple[str, ...] = (), default_as_of: bool = False) -> None:
    """Deploy, run through the worker, and check the run, its tasks, tags and artifacts via the API; then an
    order in the warehouse, the relay deployment and the run the event triggers, on the same server and worker.

    With `default_as_of`, also a dry run without `as_of`: it acts on today in the schedule's timezone.
    """
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                                FlowRunFilterId)
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from models import registry

    plan = compile_file(SHIPPED_PLAYBOOKS / f"{PLAYBOOK}.yaml", load_config())
    first = _deploy(api, PLAYBOOK, TRIGGERED, *deploy_args)
    assert first.returncode == 0, first.stderr
    assert "work pool 'lifecycle' (process): created" in first.stdout
    assert f"{PLAYBOOK}/{PLAYBOOK}: created; cron '0 10 * * *' Asia/Shanghai" in first.stdout
    assert (f"{TRIGGERED}/{TRIGGERED}: created; cron '0 12 * * *' Asia/Shanghai; "
            "and on each lifecycle.order.placed event (trigger)") in first.stdout
    if "--db" in deploy_args:
        assert "(checked here only; deployments name no URL): schema current; models: churn " in first.stdout
    for line in ("event-relay/event-relay: created; every minute (cron '* * * * *' UTC); hands new trigger events",
                 "deliver-due/deliver-due: created; hourly (cron '0 * * * *' UTC); sends the touches quiet hours deferred",
                 "kpis/kpis: created; Mondays 08:00 Asia/Shanghai (cron '0 8 * * 1' Asia/Shanghai); the weekly"):
        assert line in first.stdout, first.stdout

    stack, client = _client(api)
    with stack:
        dep = client.read_deployment_by_name(f"{PLAYBOOK}/{PLAYBOOK}")
        # what the worker needs, and no connection string anywhere in the deployment
        assert dep.entrypoint == "flows/build.py:playbook_flow" and dep.work_pool_name == "lifecycle"
        assert dep.parameters == {"playbook": f"playbooks/{PLAYBOOK}.yaml", "dry_run": False}
        assert dep.job_variables["working_dir"] == str(REPO)
        assert [(s.schedule.cron, s.schedule.timezone) for s in dep.schedules] == [("0 10 * * *", "Asia/Shanghai")]
        assert warehouse_url not in dep.model_dump_json()
        assert client.read_work_pool("lifecycle").type == "process"
        assert client.read_resource_related_automations(f"prefect.deployment.{dep.id}") == []  # no trigger
        _check_system_and_trigger(client, warehouse_url)

        with _worker(tmp, api, LIFECYCLE_HOME=str(tmp / "home"), **worker_env):  # starts while we deploy again
            again = _deploy(api, PLAYBOOK, TRIGGERED, *deploy_args)
            assert again.returncode == 0, again.stderr
            assert f"{PLAYBOOK}/{PLAYBOOK}: unchanged" in again.stdout and "event-relay/event-relay: unchanged" in again.stdout
            assert "created" not in again.stdout and "updated" not in again.stdout, again.stdout
            assert client.read_deployment(dep.id).updated == dep.updated

            with temporary_settings({PREFECT_API_URL: api}):
                run = run_deployment(f"{PLAYBOOK}/{PLAYBOOK}", parameters={"as_of": END.isoformat()}, timeout=150)
                assert run.state is not None and run.state.is_completed(), \
                    f"{run.state}\n{_tail(tmp / 'worker.log')}"
                if default_as_of:  # without as_of: a dry run for today in Asia/Shanghai, named the same way
                    dry = run_deployment(f"{PLAYBOOK}/{PLAYBOOK}", parameters={"dry_run": True}, timeout=150)
                    assert dry.state is not None and dry.state.is_completed(), \
                        f"{dry.state}\n{_tail(tmp / 'worker.log')}"

            run = client.read_flow_run(run.id)
            assert run.name == f"{PLAYBOOK}-{END.isoformat()}"
            assert client.read_flow(run.flow_id).name == PLAYBOOK
            assert run.deployment_id == dep.id
            model = registry.latest(engine, "churn")
            # the model tag comes from inside the run: the deployment cannot know it
            assert {"lifecycle", f"playbook:{PLAYBOOK}", f"plan:{plan.plan_hash}", f"model:{model.version}"} <= set(run.tags)

            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            assert STEPS <= {t.name.rsplit("-", 1)[0] for t in tasks}
            assert all(t.state.is_completed() for t in tasks), [(t.name, t.state.type) for t in tasks]

            arts = {a.key: a for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))}
            key = PLAYBOOK.replace("_", "-")
            summary, table = arts[f"{key}-summary"], arts[f"{key}-segments"]
            assert summary.type == "markdown" and f"{PLAYBOOK} on {END.isoformat()}" in summary.data
            assert plan.plan_hash in summary.data
            rows = json.loads(table.data) if isinstance(table.data, str) else table.data
            assert table.type == "table" and rows and {r["segment"] for r in rows} <= {s.name for s in plan.segments}

            if default_as_of:
                dry = client.read_flow_run(dry.id)
                today = dry.expected_start_time.astimezone(zoneinfo.ZoneInfo("Asia/Shanghai")).date()
                assert dry.name == f"{PLAYBOOK}-{today.isoformat()}" and dry.state.is_completed()

            # the worker's flow run wrote to this warehouse (reached through the deployment's environment)
            with engine.connect() as conn:
                ledger = conn.execute(select(touches.c.plan_hash, touches.c.status)).all()
                ids = [r[0] for r in conn.execute(select(customers.c.customer_id).limit(200))]
            assert ledger and {h for h, _ in ledger} == {plan.plan_hash}
            assert any(s == "sent" for _, s in ledger)
            # no personal data in what ops see: no customer id in the artifacts
            assert not any(str(i) in summary.data or str(i) in json.dumps(rows) for i in ids if len(str(i)) > 4)

            _event_triggered_run(tmp, api, engine, client)


def _check_system_and_trigger(client, warehouse_url: str) -> None:
    """The onboarding deployment's trigger (an automation it owns) and the three system deployments."""
    onboarding = client.read_deployment_by_name(f"{TRIGGERED}/{TRIGGERED}")
    [auto] = client.read_resource_related_automations(f"prefect.deployment.{onboarding.id}")
    assert auto.enabled and auto.trigger.expect == {"lifecycle.order.placed"}
    assert auto.trigger.match.root == {"prefect.resource.id": "lifecycle.event-type.order.placed"}
    [action] = auto.actions
    assert action.type == "run-deployment" and action.deployment_id == onboarding.id and action.parameters == WINDOW

    system = {name: client.read_deployment_by_name(f"{name}/{name}") for name in ("event-relay", "deliver-due", "kpis")}
    relay, deliver, kpis = system["event-relay"], system["deliver-due"], system["kpis"]
    assert relay.entrypoint == "flows/relay.py:relay_flow"
    assert relay.parameters == {"playbooks": [f"playbooks/{TRIGGERED}.yaml"], "mode": "emit"}
    assert deliver.entrypoint == "flows/build.py:deliver_flow" and deliver.parameters == {}
    assert kpis.entrypoint == "flows/kpiflow.py:kpi_flow"
    schedules = {n: [(s.schedule.cron, s.schedule.timezone) for s in d.schedules] for n, d in system.items()}
    assert schedules == {"event-relay": [("* * * * *", "UTC")], "deliver-due": [("0 * * * *", "UTC")],
                         "kpis": [("0 8 * * 1", "Asia/Shanghai")]}
    assert relay.global_concurrency_limit.limit == 1 and relay.concurrency_options.collision_strategy == "CANCEL_NEW"
    for d in system.values():
        assert {"lifecycle", "system"} <= set(d.tags) and d.work_pool_name == "lifecycle"
        assert warehouse_url not in d.model_dump_json()


def _event_triggered_run(tmp: Path, api: str, engine, client) -> None:
    """First orders land in the warehouse; one run of the relay deployment emits `lifecycle.order.placed`;
    the onboarding deployment's trigger starts a run for that window, which touches those customers only."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    plan = compile_file(SHIPPED_PLAYBOOKS / f"{TRIGGERED}.yaml", load_config())
    onboarding = client.read_deployment_by_name(f"{TRIGGERED}/{TRIGGERED}")
    at = (utcnow() - dt.timedelta(minutes=5)).replace(microsecond=0)  # older than the relay's 30 s settling time
    first = {**{c: at for c in NEW}, EARLIER: at - dt.timedelta(days=2)}
    add_first_buyers(engine, first, at - dt.timedelta(days=3))

    with temporary_settings({PREFECT_API_URL: api}):
        relay = run_deployment("event-relay/event-relay", timeout=150)
    assert relay.state is not None and relay.state.is_completed(), f"{relay.state}\n{_tail(tmp / 'worker.log')}"
    relayed = time.monotonic()
    runs_of = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[onboarding.id]))
    while True:  # the trigger fires on the event; the worker picks the run up within a poll
        runs = client.read_flow_runs(flow_run_filter=runs_of)
        if runs and all(r.state is not None and r.state.is_final() for r in runs):
            break
        assert time.monotonic() - relayed < 90, \
            f"no finished {TRIGGERED} run 90 s after the relay: {[(r.name, r.state_type) for r in runs]}\n" \
            f"{_tail(tmp / 'worker.log')}"
        time.sleep(1)
    [run] = runs  # exactly one: one window, one event, one run
    assert run.state.is_completed(), f"{run.state}\n{_tail(tmp / 'worker.log')}"
    start, end = (dt.datetime.fromisoformat(run.parameters[k]) for k in ("window_start", "window_end"))
    assert start < at <= end and run.parameters["playbook"] == f"playbooks/{TRIGGERED}.yaml"
    today = run.expected_start_time.astimezone(zoneinfo.ZoneInfo("Asia/Shanghai")).date()
    assert run.name == f"{TRIGGERED}-{today.isoformat()}"
    assert {"lifecycle", f"playbook:{TRIGGERED}", "trigger:order.placed"} <= set(run.tags)
    with engine.connect() as conn:
        ledger = conn.execute(select(touches.c.customer_id, touches.c.status)
                              .where(touches.c.plan_hash == plan.plan_hash)).all()
    # only the customers behind the window's events: not the one who would qualify but ordered earlier
    assert ledger and {c for c, _ in ledger} <= set(NEW) and EARLIER not in {c for c, _ in ledger}
    assert any(s == "sent" for _, s in ledger)


def test_deploy_and_run_on_sqlite(tmp_path, capsys):
    """The warehouse URL reaches the worker through a Secret block the deployment names, not its value."""
    url = f"sqlite:///{tmp_path / 'only-via-secret.db'}"
    with _server(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}") as up:
        engine = make_world(url, customers=2000, seed=4)
        train(engine, END, 90)
        api = up()
        from prefect.blocks.system import Secret
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from flows.cli import main

        with temporary_settings({PREFECT_API_URL: api}):
            assert main(["deploy", PLAYBOOK, "--db-secret", "lifecycle-test-db"]) == 2  # not there yet
            assert "error[L209]" in capsys.readouterr().err
            Secret(value=url).save("lifecycle-test-db")
        # --db only makes deploy check that warehouse; the URL still reaches the worker only through the Secret
        _run_and_check(tmp_path, api, url, engine, worker_env={},
                       deploy_args=("--db-secret", "lifecycle-test-db", "--db", url), default_as_of=True)
        _update_and_prune(tmp_path, api, capsys)


def _update_and_prune(tmp: Path, api: str, capsys) -> None:
    """A changed schedule or trigger updates the deployment (and the relay learns of a new triggered playbook);
    a deleted playbook's deployment is reported, then pruned with its trigger."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli import main

    folder = tmp / "more"
    shutil.copytree(SHIPPED_PLAYBOOKS / "templates", folder / "templates")
    path = folder / "onb_copy.yaml"
    text = (SHIPPED_PLAYBOOKS / f"{TRIGGERED}.yaml").read_text().replace(f"name: {TRIGGERED}", "name: onb_copy")
    path.write_text(text)

    def deploy(*args: str) -> str:
        capsys.readouterr()
        with temporary_settings({PREFECT_API_URL: api}):
            assert main(["deploy", *args, "--db-secret", "lifecycle-test-db"]) == 0  # as deployed before
        return capsys.readouterr().out

    def relayed() -> list[str]:
        return client.read_deployment_by_name("event-relay/event-relay").parameters["playbooks"]

    def expects() -> list[set[str]]:
        dep = client.read_deployment_by_name("onb_copy/onb_copy")
        return [a.trigger.expect for a in client.read_resource_related_automations(f"prefect.deployment.{dep.id}")]

    stack, client = _client(api)
    with stack:
        out = deploy(str(path))
        assert "onb_copy/onb_copy: created; cron '0 12 * * *' Asia/Shanghai; and on each lifecycle.order.placed" in out
        assert "event-relay/event-relay: updated (parameters, version, description)" in out  # one more to relay
        assert relayed() == sorted([f"playbooks/{TRIGGERED}.yaml", str(path)]) and expects() == [{"lifecycle.order.placed"}]

        path.write_text(text.replace('cron: "0 12 * * *"', 'cron: "30 8 * * *"'))
        out = deploy(str(path))
        assert "onb_copy/onb_copy: updated (schedules, tags, version, description); cron '30 8 * * *'" in out
        path.write_text(text.replace("trigger:\n  event: order.placed", "trigger:\n  event: app.visit"))
        out = deploy(str(path))
        assert "onb_copy/onb_copy: updated (schedules, tags, version, description, triggers)" in out, out
        assert expects() == [{"lifecycle.app.visit"}]
        assert "onb_copy/onb_copy: unchanged" in deploy(str(path))

        path.unlink()
        out = deploy(PLAYBOOK)
        assert "onb_copy/onb_copy: stale" in out and "--prune" in out and f"{PLAYBOOK}/{PLAYBOOK}: unchanged" in out
        assert "event-relay/event-relay: updated (parameters" in out and relayed() == [f"playbooks/{TRIGGERED}.yaml"]
        dep = client.read_deployment_by_name("onb_copy/onb_copy")
        assert "onb_copy/onb_copy: removed" in deploy(PLAYBOOK, "--prune")
        assert client.read_resource_related_automations(f"prefect.deployment.{dep.id}") == []  # its trigger too
        out = deploy(PLAYBOOK)
        assert "onb_copy" not in out and "stale" not in out and "event-relay/event-relay: unchanged" in out


@pytest.mark.postgres
def test_deploy_and_run_on_postgres(tmp_path, request):
    """PostgreSQL as the Prefect server's database and as the warehouse (URL from the worker's environment)."""
    base = os.environ.get("LIFECYCLE_TEST_PG_URL")
    if not base:
        pytest.skip(PG_REASON)
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = request.getfixturevalue("pg_url")
    name = f"lc_prefect_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = None
    try:
        prefect_db = make_url(base).set(drivername="postgresql+asyncpg", database=name, query={})
        with _server(tmp_path, prefect_db.render_as_string(hide_password=False)) as up:
            engine = make_world(url, customers=2000, seed=4)
            train(engine, END, 90)
            _run_and_check(tmp_path, up(), url, engine, worker_env={"LIFECYCLE_DB_URL": url})
    finally:
        if engine is not None:
            engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_deploy_without_a_server_says_how_to_start_one(capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli import main

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["deploy"]) == 2
    err = capsys.readouterr().err
    assert "error[L206]" in err and "PREFECT_API_URL" in err
    assert "lifecycle ui" in err and "infra/compose.yaml" in err


def test_deploy_to_a_server_that_is_not_there(capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli import main

    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{_free_port()}/api"}):
        assert main(["deploy", PLAYBOOK]) == 2
    err = capsys.readouterr().err
    assert "error[L207]" in err and "no Prefect server answers" in err


def test_deploy_with_db_checks_that_warehouse_before_touching_the_server(tmp_path, capsys):
    """--db: no warehouse there, no lifecycle tables, or no model a playbook needs stops the deploy, saying which."""
    import sqlite3

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli import main

    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    untrained = f"sqlite:///{tmp_path / 'untrained.db'}"
    make_world(untrained, customers=300, seed=4)
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{_free_port()}/api"}):  # never reached
        assert main(["deploy", PLAYBOOK, "--db", f"sqlite:///{tmp_path / 'missing.db'}"]) == 1
        assert "error[L401]" in capsys.readouterr().err
        assert main(["deploy", PLAYBOOK, "--db", f"sqlite:///{empty}"]) == 1
        err = capsys.readouterr().err
        assert "error[L405]" in err and "lifecycle db upgrade --db URL" in err
        assert main(["deploy", PLAYBOOK, TRIGGERED, "--db", untrained]) == 1
        err = capsys.readouterr().err
        assert "error[L501]" in err and f"needed by {PLAYBOOK}" in err and TRIGGERED not in err  # it has no model
        assert "lifecycle model train --db URL" in err
        assert main(["deploy", TRIGGERED, "--db", untrained]) == 2  # nothing missing: on to the (absent) server
        assert "error[L207]" in capsys.readouterr().err
