"""Claims: a rerun takes over the claims of a run that is gone at once, waits for a live one, and a
delivery that ends for any reason leaves no claim behind."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest
from sqlalchemy import insert, select, update

from flows.summary import outcome_lines
from infra.warehouse.bulk import utcnow
from infra.warehouse.db import open_warehouse, upgrade
from infra.warehouse.schema import claimants, touches
from tasks import claims

KEYS = [f"k{i}" for i in range(5)]


@pytest.fixture
def engine(any_url):
    engine = open_warehouse(any_url, create=True)
    upgrade(engine)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(insert(touches), [{"touch_key": k, "playbook": "p", "playbook_version": "1", "plan_hash": "h",
                                        "step": "main", "as_of": dt.date(2026, 5, 1), "customer_id": f"c{k}",
                                        "status": "planned", "created_at": now, "updated_at": now} for k in KEYS])
    return engine


def held_by(engine, token: str, *, host: str | None = None, pid: int | None = None, started: str | None = None,
            flow_run_id: str | None = None) -> None:
    """The ledger as a run left it that claimed every key just now (and, with `host`, registered itself)."""
    with engine.begin() as conn:
        conn.execute(update(touches).values(claimed_by=token, claimed_at=utcnow()))
        if host is not None:
            conn.execute(insert(claimants).values(token=token, host=host, pid=pid, started=started,
                                                  flow_run_id=flow_run_id, created_at=utcnow()))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def holders(engine) -> set:
    with engine.connect() as conn:
        return set(conn.execute(select(touches.c.claimed_by).where(touches.c.status == "planned")).scalars())


def test_the_claims_of_a_process_that_died_here_are_taken_over_without_waiting(engine):
    pid = dead_pid()
    held_by(engine, "dead", host=claims.host_identity(), pid=pid, started=claims.process_started(os.getpid()))
    claimer = claims.Claimer(engine)
    got = claimer.claim(KEYS)
    assert got.mine == set(KEYS) and got.taken_over == len(KEYS) and got.held == []
    claimer.close()
    assert holders(engine) == {None}  # released again: nothing was sent


def test_a_live_run_keeps_its_claims_and_is_named(engine):
    me = os.getpid()
    held_by(engine, "live", host=claims.host_identity(), pid=me, started=claims.process_started(me))
    claimer = claims.Claimer(engine)
    got = claimer.claim(KEYS)
    assert got.mine == set() and got.taken_over == 0
    [holder] = got.held
    assert holder.keys == len(KEYS) and holder.describe(claimer.host) == f"process {me} on this host"
    claimer.close()
    assert holders(engine) == {"live"}  # closing releases only its own claims


def test_a_new_process_under_a_dead_runs_pid_does_not_keep_its_claims(engine):
    me = os.getpid()  # alive, but it started at another time than the claimant did
    held_by(engine, "reused", host=claims.host_identity(), pid=me, started="1")
    assert claims.Claimer(engine).claim(KEYS).taken_over == len(KEYS)


def test_a_run_on_another_host_without_a_known_state_waits_for_its_lease(engine, monkeypatch):
    held_by(engine, "far", host="worker-7|boot|pid:[1]", pid=1, flow_run_id="00000000-0000-0000-0000-000000000001")
    got = claims.Claimer(engine).claim(KEYS)
    assert got.mine == set() and got.held[0].describe("here") == "process 1 on host worker-7"
    with engine.begin() as conn:  # the lease runs out
        conn.execute(update(touches).values(claimed_at=dt.datetime(2000, 1, 1)))
    assert claims.Claimer(engine).claim(KEYS).mine == set(KEYS)


def test_a_run_whose_flow_run_crashed_on_another_host_loses_its_claims(engine, monkeypatch):
    held_by(engine, "crashed", host="worker-7|boot|pid:[1]", pid=1, flow_run_id="f1")
    monkeypatch.setattr(claims, "_flow_run_over", lambda flow_run_id: flow_run_id == "f1")
    assert claims.Claimer(engine).claim(KEYS).taken_over == len(KEYS)


def test_claims_without_a_claimant_row_wait_for_their_lease(engine):
    held_by(engine, "old")  # a run from before claimants were recorded
    got = claims.Claimer(engine).claim(KEYS)
    assert got.mine == set() and got.held[0].describe("here") == "a run that left no trace of itself"


def test_closing_releases_what_is_still_planned_and_forgets_the_claimant(engine):
    claimer = claims.Claimer(engine)
    assert claimer.claim(KEYS).mine == set(KEYS)
    with engine.begin() as conn:
        conn.execute(update(touches).where(touches.c.touch_key == "k0").values(status="sent"))
    claimer.close()
    with engine.connect() as conn:
        rows = dict(conn.execute(select(touches.c.touch_key, touches.c.claimed_by)).all())
        assert conn.execute(select(claimants)).all() == []
    assert rows.pop("k0") == claimer.token  # a sent row keeps who sent it
    assert set(rows.values()) == {None}


def test_the_summary_names_who_holds_touches_and_never_invents_a_concurrent_run():
    base = {"dry_run": False, "touches": {"push": 3}, "dropped": {}, "outboxes": {}}
    quiet = "\n".join(outcome_lines({**base, "retried": 2}))
    assert "concurrent" not in quiet and "held by" not in quiet and "provider calls retried: 2" in quiet
    held = "\n".join(outcome_lines({**base, "claimed_elsewhere": 4, "holders": {"process 12 on this host": 4},
                                    "taken_over": 3}))
    assert "held by another run that may still be delivering them: 4 (process 12 on this host (4))" in held
    assert "taken over from a run that is gone (killed or crashed): 3" in held
