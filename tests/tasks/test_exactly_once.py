"""Exactly-once delivery: a dispatching process killed at a random moment and rerun, and two concurrent runs
on PostgreSQL. (Kills at each named point of a whole run, and every channel type: test_kills.py.)"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from infra.warehouse.db import open_warehouse, upgrade
from infra.warehouse.schema import touches

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = """
name: once
model: none
segments:
  - name: rest
    else: true
    tiers:
      - {channel: push, template: p.j2}
"""
N, BATCH = 120, 25
KILLS = 5  # random kill moments, one in each fifth of an uninterrupted dispatch


@pytest.fixture
def playbook(tmp_path) -> Path:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "p.j2").write_text("Hello {{ customer_id }}")
    (tmp_path / "once.yaml").write_text(PLAYBOOK)
    return tmp_path / "once.yaml"


def child(url: str, playbook: Path, home: Path, *, crash: str | None = None, lease: str | None = None,
          go: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "LIFECYCLE_HOME": str(home)}
    env.pop("LIFECYCLE_TEST_CRASH_AT", None)
    if crash:
        env["LIFECYCLE_TEST_CRASH_AT"] = crash
    if lease is not None:
        env["LIFECYCLE_CLAIM_LEASE_SECONDS"] = lease
    args = [sys.executable, "-m", "tests.tasks.dispatch_child", url, str(playbook), str(N), str(BATCH)]
    return subprocess.Popen(args + ([str(go)] if go else []), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def delivered(*homes: Path) -> list[dict]:
    out = []
    for home in homes:
        path = home / "outbox" / "push.jsonl"
        out += [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return out


def ledger(url: str) -> dict[str, str]:
    engine = open_warehouse(url)
    with engine.connect() as conn:
        return dict(conn.execute(select(touches.c.touch_key, touches.c.status)).all())


def check_every_touch_once(url: str, messages: list[dict], repeats_allowed: int) -> None:
    status = ledger(url)
    assert len(status) == N and set(status.values()) == {"sent"}
    keys_per_customer: dict[str, set[str]] = {}
    for m in messages:
        keys_per_customer.setdefault(m["customer_id"], set()).add(m["touch_key"])
    assert len(keys_per_customer) == N  # every planned touch delivered
    assert all(len(keys) == 1 for keys in keys_per_customer.values())  # never two keys for one step
    assert set().union(*keys_per_customer.values()) == set(status)
    repeats = sum(n - 1 for n in Counter(m["touch_key"] for m in messages).values())
    assert repeats <= repeats_allowed


@pytest.mark.slow
@pytest.mark.postgres
def test_two_concurrent_runs_on_postgres_never_double_send(tmp_path, playbook, pg_url):
    upgrade(open_warehouse(pg_url))
    go = tmp_path / "go"
    homes = [tmp_path / "a", tmp_path / "b"]
    procs = [child(pg_url, playbook, h, go=go) for h in homes]
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    messages = delivered(*homes)
    check_every_touch_once(pg_url, messages, 0)
    assert len(messages) == N


def ready(proc: subprocess.Popen) -> None:
    """Wait until the child has imported, compiled and allocated, and waits for its go file."""
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"


@pytest.fixture(scope="module")
def dispatch_seconds(tmp_path_factory) -> float:
    """How long one uninterrupted dispatch of N touches takes here (imports and compiling excluded)."""
    root = tmp_path_factory.mktemp("reference")
    (root / "templates").mkdir()
    (root / "templates" / "p.j2").write_text("Hello {{ customer_id }}")
    (root / "once.yaml").write_text(PLAYBOOK)
    url = f"sqlite:///{root / 'w.db'}"
    upgrade(open_warehouse(url, create=True))
    proc = child(url, root / "once.yaml", root / "home", go=root / "go")
    ready(proc)
    start = time.monotonic()
    (root / "go").touch()
    assert proc.stdout is not None and proc.stdout.readline().strip() == "done"
    took = time.monotonic() - start
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return took


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(KILLS))
def test_a_run_killed_at_a_random_moment_then_rerun_delivers_every_touch_once(tmp_path, playbook, seed,
                                                                              dispatch_seconds):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    upgrade(open_warehouse(url, create=True))
    first_home, second_home, go = tmp_path / "first", tmp_path / "second", tmp_path / "go"
    first = child(url, playbook, first_home, go=go)
    ready(first)
    go.touch()
    time.sleep((seed + random.Random(seed).random()) / KILLS * dispatch_seconds)  # one random moment per fifth
    first.kill()  # SIGKILL, wherever it is (or a no-op when it already finished)
    first.communicate(timeout=120)
    marked = {k for k, s in ledger(url).items() if s == "sent"}
    before = delivered(first_home)
    second = child(url, playbook, second_home)  # the dead run's claims are taken over at once
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    again = delivered(second_home)
    # a repeat is a touch the first run handed to the channel but had not yet marked sent: in flight
    repeated = {m["touch_key"] for m in again} & {m["touch_key"] for m in before}
    assert not repeated & marked
    assert not {m["touch_key"] for m in again} & marked  # nothing marked sent goes out again
    check_every_touch_once(url, before + again, BATCH)
