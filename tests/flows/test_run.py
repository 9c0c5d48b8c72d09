"""A playbook end to end as a Prefect flow (one harness per session): ledger, outbox and run record agree."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy import func, select

from flows.build import run_plan
from flows.compiler import compile_file
from flows.training import train
from infra.settings import SHIPPED_PLAYBOOKS, load_config, outbox_dir
from infra.warehouse.schema import consents, feature_blocks, touches
from tests.conftest import END, make_world

pytestmark = pytest.mark.slow


def _ledger(engine):
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(touches)).mappings()]


def _outbox():
    out = []
    for path in sorted(outbox_dir().glob("*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines()]
    return out


def _run(url, monkeypatch, *, dry_run=False):
    monkeypatch.setenv("LIFECYCLE_DB_URL", url)
    path = SHIPPED_PLAYBOOKS / "churn_winback.yaml"
    plan = compile_file(path, load_config())
    return plan, run_plan(plan, str(path), END, dry_run=dry_run, model_version=None)


def _end_to_end(url, monkeypatch):
    engine = make_world(url, customers=2500, seed=5)
    model = train(engine, END, 90)
    plan, summary = _run(url, monkeypatch)

    rows = _ledger(engine)
    sent = [r for r in rows if r["status"] == "sent"]
    assert sent, "the demo world always has customers to win back"
    assert sum(summary["touches"].values()) == len(sent)
    assert summary["audience"] >= sum(summary["segments"].values()) == len(rows)
    assert all(r["plan_hash"] == plan.plan_hash and r["model_version"] == model.version for r in rows)
    assert {r["status"] for r in rows} <= {"sent", "dropped", "held_out", "deferred"}
    assert all(r["reason"] in {"no_consent", "capacity", "budget", "frequency_cap"}
               for r in rows if r["status"] == "dropped")
    # a replay of a day long past leaves its deferrals for `lifecycle deliver` at their time
    assert not summary["deferred_sent"] and not summary["deferred_dropped"]
    assert sum(r["status"] == "deferred" for r in rows) == summary["deferred"] > 0
    assert all(r["reason"] == "holdout" for r in rows if r["status"] == "held_out")
    assert any(r["status"] == "held_out" for r in rows), "churn_winback holds out 10% as a control group"
    assert all(r["variant"] in ("coupon", "gift") for r in sent if r["segment"] == "mid_value" and r["tier"] == 0)
    # the run decides exactly as `lifecycle plan` previews
    from flows.preview import preview
    report = preview(plan, engine, END, model)
    assert sum(t["customers"] for t in report["tiers"]) == len(sent) + sum(r["status"] == "deferred" for r in rows)

    messages = _outbox()
    assert sorted(m["touch_key"] for m in messages) == sorted(r["touch_key"] for r in sent)
    by_key = {r["touch_key"]: r for r in sent}
    for m in messages:
        assert m["customer_id"] == by_key[m["touch_key"]]["customer_id"]
        assert m["channel"] == by_key[m["touch_key"]]["channel"] and m["body"].strip()
        assert m["tier"] == by_key[m["touch_key"]]["tier"] + 1  # the outbox numbers tiers from 1; the ledger from 0

    # nobody is touched on a channel they have not consented to for marketing
    with engine.connect() as conn:
        granted = {(c, ch) for c, ch in conn.execute(
            select(consents.c.customer_id, consents.c.channel).where(
                consents.c.purpose == "marketing", consents.c.withdrawn_at.is_(None)))}
    consent_of = {t.channel: t.consent_channel for s in plan.segments for t in s.tiers}
    assert all((r["customer_id"], consent_of[r["channel"]]) in granted for r in sent)

    # a second run for the same day sends nothing again
    _, again = _run(url, monkeypatch)
    assert again["touches"] == {} and again["already_sent"] == len(sent)
    assert len(_outbox()) == len(messages) and len(_ledger(engine)) == len(rows)
    return summary


def test_end_to_end_on_sqlite(prefect_harness, sqlite_url, monkeypatch):
    monkeypatch.setattr("tasks.dispatch.BATCH", 100)  # several batches: the run keeps a progress artifact
    summary = _end_to_end(sqlite_url, monkeypatch)
    _check_prefect_run(summary)


@pytest.mark.postgres
def test_end_to_end_on_postgres(prefect_harness, pg_url, monkeypatch):
    _end_to_end(pg_url, monkeypatch)


def test_dry_run_writes_nothing(prefect_harness, sqlite_url, monkeypatch):
    engine = make_world(sqlite_url, customers=1500, seed=9)
    train(engine, END, 90)
    _, summary = _run(sqlite_url, monkeypatch, dry_run=True)
    assert summary["dry_run"] and sum(summary["touches"].values()) > 0
    assert summary["previews"] and all(p["body"] for p in summary["previews"])
    assert _ledger(engine) == [] and _outbox() == []
    with engine.connect() as conn:  # not even the incremental feature state
        assert conn.execute(select(func.count()).select_from(feature_blocks)).scalar_one() == 0


def _check_prefect_run(summary):
    """The run is recorded in Prefect as ops will see it: named, tagged, with its tasks and artifacts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

    async def fetch():
        async with get_client() as client:
            run = await client.read_flow_run(summary["flow_run_id"])
            flow = await client.read_flow(run.flow_id)
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
            return run, flow, tasks, arts

    run, flow, tasks, arts = asyncio.run(fetch())
    assert run.state.is_completed()
    assert flow.name == "churn_winback" and run.name == f"churn_winback-{END.isoformat()}"
    assert f"plan:{summary['plan_hash']}" in run.tags and "playbook:churn_winback" in run.tags
    names = {t.name.rsplit("-", 1)[0] for t in tasks}
    assert {"extract", "features", "score", "segment", "allocate", "dispatch"} <= names
    assert {a.key for a in arts} >= {"churn-winback-summary", "churn-winback-segments", "churn-winback-drops"}
    progress = [a for a in arts if a.type == "progress"]
    assert progress and progress[0].data == 100.0, "long dispatches show their progress, ending at 100%"


def test_a_journey_across_runs_follow_up_when_due_and_no_reentry(prefect_harness, sqlite_url, monkeypatch):
    """Day 0 enters customers; three days later the next run sends the reminder to those who did not buy,
    and the 30-day re-entry rule keeps day 0's entrants out of the main step."""
    import datetime as dt

    engine = make_world(sqlite_url, customers=2500, seed=5)
    train(engine, END, 90)
    monkeypatch.setenv("LIFECYCLE_DB_URL", sqlite_url)
    path = SHIPPED_PLAYBOOKS / "churn_winback.yaml"
    plan = compile_file(path, load_config())
    day0, day3 = END - dt.timedelta(days=3), END
    first = run_plan(plan, str(path), day0, dry_run=False, model_version=None)
    entered = {r["customer_id"] for r in _ledger(engine) if r["as_of"] == day0 and r["status"] in ("sent", "held_out")}
    assert sum(first["touches"].values()) > 0

    later = run_plan(plan, str(path), day3, dry_run=False, model_version=None)
    rows = _ledger(engine)
    reminders = [r for r in rows if r["step"] == "reminder"]
    step = later["follow_ups"]["steps"]["reminder"]
    assert reminders and sum(step["sent"].values()) == sum(r["status"] == "sent" for r in reminders)
    main_day0 = {r["customer_id"]: r for r in rows if r["as_of"] == day0 and r["step"] == "main"}
    assert all(main_day0[r["customer_id"]]["status"] == "sent" and main_day0[r["customer_id"]]["segment"]
               in ("high_value", "mid_value") for r in reminders)
    assert later["not_reentered"] > 0
    main_day3 = [r for r in rows if r["as_of"] == day3 and r["step"] == "main"]
    assert not entered & {r["customer_id"] for r in main_day3}
    # segments count the customers decided today: the ones the re-entry rule kept out are not in them
    assert sum(later["segments"].values()) == len(main_day3)


def test_a_failed_step_skips_its_dependents_the_run_says_why_and_a_rerun_resumes(prefect_harness, sqlite_url,
                                                                                  monkeypatch):
    from sqlalchemy.exc import OperationalError

    from infra.errors import RunError
    from tasks import allocate as allocate_module
    from tasks import dispatch as dispatch_module

    engine = make_world(sqlite_url, customers=1500, seed=9)
    train(engine, END, 90)
    real_allocate, real_dispatch, calls = allocate_module.allocate_frame, dispatch_module.dispatch_frame, []

    def flaky_allocate(*args, **kwargs):  # the database drops once: the task retries and goes on
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))
        return real_allocate(*args, **kwargs)

    def broken_dispatch(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(allocate_module, "allocate_frame", flaky_allocate)
    monkeypatch.setattr(dispatch_module, "dispatch_frame", broken_dispatch)
    with pytest.raises(RunError) as err:
        _run(sqlite_url, monkeypatch)
    assert len(calls) == 2, "a lost connection is retried"
    assert err.value.code == "L603" and "dispatch failed: RuntimeError: disk full" in err.value.message
    assert "skipped because of it: enter journeys" in err.value.message
    assert _ledger(engine) == [] and _outbox() == []

    monkeypatch.setattr(dispatch_module, "dispatch_frame", real_dispatch)  # the cause is fixed
    _, summary = _run(sqlite_url, monkeypatch)
    assert sum(summary["touches"].values()) == sum(r["status"] == "sent" for r in _ledger(engine)) > 0
    assert not summary["failed_steps"]


@pytest.mark.parametrize("as_of", ["tomorrow", "2026-13-01", "0001-01-01", "9999-12-31"])
def test_a_deployment_runs_as_of_that_is_no_usable_date_is_one_clear_error(as_of):
    """A deployment's as_of is typed in the Prefect UI, past the command line's checks."""
    from flows.build import run_day
    from infra.errors import UsageError

    with pytest.raises(UsageError) as err:
        run_day(as_of)
    assert err.value.code == "L349" and as_of in err.value.message
