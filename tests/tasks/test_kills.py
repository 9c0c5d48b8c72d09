"""Runs killed with SIGKILL at random points, then run again: the outcome is the uninterrupted run's.

A real `lifecycle run` (the CLI, a Prefect flow run on the session's test server) over a small generated
world, sending through every channel type: SMS to a webhook gateway, advisor chats to WeCom, email to
an SMTP relay (the fakes in tests/tasks/fakes.py) and push to the outbox file. The day before has run
already, so the run moves the kept feature state forward and saves it on a thread. The kill comes at
one of infra/faults.py's points, the n-th time it is reached (hypothesis draws both): while the ledger
is written, between a claim and the send, between two messages of a batch, while a batch is marked,
while journeys are entered, while the feature state is saved. Then the same run again, at once (the dead
run's claims are taken over without waiting for their lease), and the checks:
- ledger and journeys row for row as a run that was never interrupted (same decisions, same outcomes);
- every touch the ledger calls sent reached its provider, nothing else did, one key per customer;
- a key reached its provider twice only when it was handed over in the last moments before the kill
  (the ledger marks deliveries every 0.5 s during a batch) or was in flight then.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from infra.faults import POINTS
from infra.warehouse.db import open_warehouse
from infra.warehouse.schema import customers, feature_watermark, journeys, touches
from tasks.claims import Marker
from tests.conftest import make_world
from tests.tasks.fakes import FakeHTTP, FakeSMTP

pytestmark = pytest.mark.slow

DAY = dt.date(2026, 6, 2)  # the run killed; the day before has run already
LIFECYCLE = str(Path(sys.executable).parent / "lifecycle")
PLAYBOOK = """
name: kills
model: none
audience: "orders_total >= 1"
segments:
  - name: top
    when: "monetary_365d >= 1500"
    tiers:
      - {channel: advisor, template: t.txt.j2}
      - {channel: sms, template: t.txt.j2}
  - name: middle
    when: "monetary_365d >= 400"
    tiers:
      - {channel: sms, template: t.txt.j2}
  - name: recent
    when: "recency_days <= 90"
    tiers:
      - {channel: email, template: t.html.j2}
  - name: rest
    else: true
    tiers:
      - {channel: push, template: t.txt.j2}
follow_up:
  - name: nudge
    after_days: 2
    segments: [top, middle]
    tiers:
      - {channel: push, template: t.txt.j2}
experiment:
  holdout_percent: 10
"""
CONFIG = """
channels:
  sms: {{type: webhook, url: "{http}/send", timeout_seconds: 2, max_attempts: 2, backoff_seconds: 0.01, concurrency: 4}}
  advisor: {{type: wecom, consent: wecom, base_url: "{http}", corp_id: {corp}, secret: {secret}, timeout_seconds: 2,
            max_attempts: 2, backoff_seconds: 0.01, concurrency: 4, cost_per_message: 5}}
  email: {{type: email, host: 127.0.0.1, port: {smtp}, starttls: false, from_address: shop@example.com,
          timeout_seconds: 2, max_attempts: 2, backoff_seconds: 0.01}}
  push: {{type: outbox}}
"""
# How often each point is reached in one run of this world (at most): the n to draw from.
REACHED = {"ledger write": 1, "ledger written": 1, "claimed": 4, "sending": 60, "delivered": 4, "marking": 4,
           "marked": 4, "journeys entry": 1, "feature state": 2}
SLACK = 1.0  # seconds on top of the marker's interval, for a busy machine


class Site:
    """The fakes, a project (playbook, templates, config) and a warehouse where the day before has run."""

    def __init__(self, root: Path, api_url: str) -> None:
        self.root, self.api_url = root, api_url
        self.copies = 0
        self.http, self.smtp = FakeHTTP(), FakeSMTP()
        (root / "templates").mkdir()
        (root / "templates" / "t.txt.j2").write_text("Hello {{ first_name or 'there' }}")
        (root / "templates" / "t.html.j2").write_text('<p>Hello</p><a href="{{ unsubscribe_url }}">unsubscribe</a>')
        (root / "kills.yaml").write_text(PLAYBOOK)
        (root / "lifecycle.yaml").write_text(CONFIG.format(http=self.http.url, smtp=self.smtp.port, corp=FakeHTTP.CORP,
                                                           secret=FakeHTTP.SECRET))
        self.base = root / "base.db"
        make_world(f"sqlite:///{self.base}", customers=400, seed=11)
        run = self.run(self.base, root / "home-base", DAY - dt.timedelta(days=1))
        assert run.returncode == 0, run.stderr[-3000:]

    def run(self, db: Path, home: Path, day: dt.date, crash: str | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "LIFECYCLE_HOME": str(home), "LIFECYCLE_CONFIG": str(self.root / "lifecycle.yaml"),
               "PREFECT_API_URL": self.api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("LIFECYCLE_TEST_CRASH_AT", None)
        if crash:
            env["LIFECYCLE_TEST_CRASH_AT"] = crash
        return subprocess.run([LIFECYCLE, "run", str(self.root / "kills.yaml"), "--as-of", day.isoformat(),
                               "--db", f"sqlite:///{db}"], env=env, cwd=self.root, capture_output=True, text=True,
                              timeout=300)

    def fresh(self, name: str) -> tuple[Path, Path]:
        """A copy of the warehouse where the day before has run, and an empty state folder (new names
        each time: the test's own connections to an earlier copy must never see this one)."""
        self.copies += 1
        db, home = self.root / f"{name}-{self.copies}.db", self.root / f"home-{name}-{self.copies}"
        with sqlite3.connect(self.base) as conn:  # everything in the file itself, nothing left in its WAL
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        shutil.copy(self.base, db)
        self.http.reset()
        self.smtp.reset()
        return db, home


def ledger(db: Path) -> pd.DataFrame:
    t = touches.c
    with open_warehouse(f"sqlite:///{db}").connect() as conn:
        rows = conn.execute(select(t.touch_key, t.customer_id, t.step, t.segment, t.tier, t.channel, t.variant,
                                   t.template, t.status, t.reason).where(t.as_of == DAY)).all()
    return pd.DataFrame(rows, columns=["touch_key", "customer_id", "step", "segment", "tier", "channel", "variant",
                                       "template", "status", "reason"]).sort_values("touch_key", ignore_index=True)


def journeys_of(db: Path) -> pd.DataFrame:
    j = journeys.c
    with open_warehouse(f"sqlite:///{db}").connect() as conn:
        rows = conn.execute(select(j.customer_id, j.entered_on, j.segment, j.arm, j.state, j.next_step, j.next_due)
                            .order_by(j.customer_id, j.entered_on)).all()
        mark = conn.execute(select(feature_watermark.c.as_of, feature_watermark.c.orders_before,
                                   feature_watermark.c.events_window)).all()
    return pd.DataFrame(rows, columns=["customer_id", "entered_on", "segment", "arm", "state", "next_step",
                                       "next_due"]).assign(state_mark=str(mark))


def resolver(db: Path, got: pd.DataFrame):
    """Who a provider saw (a webhook's touch key, a WeCom contact, an email address) -> the touch key."""
    main = got[got["step"] == "main"]
    by_customer = {(c, ch): k for k, c, ch in zip(main["touch_key"], main["customer_id"], main["channel"])}
    with open_warehouse(f"sqlite:///{db}").connect() as conn:
        address = dict(conn.execute(select(customers.c.email, customers.c.customer_id)).all())
    keys = set(got["touch_key"])

    def key_of(who: str) -> str:
        if who in keys:
            return who
        if (who, "advisor") in by_customer:
            return by_customer[(who, "advisor")]
        return by_customer.get((address.get(who), "email"), f"unknown:{who}")

    return key_of


def deliveries(log: list[tuple[float, str]], home: Path, key_of) -> list[tuple[float, str]]:
    """(when, touch key) for every message a provider accepted, and (0, key) per outbox line."""
    out = [(t, key_of(who)) for t, who in log]
    path = home / "outbox" / "push.jsonl"
    if path.exists():
        out += [(0.0, json.loads(line)["touch_key"]) for line in path.read_text().splitlines() if line.strip()]
    return out


@pytest.fixture(scope="module")
def site(prefect_harness, tmp_path_factory):
    from prefect.settings import PREFECT_API_URL

    s = Site(tmp_path_factory.mktemp("kills"), PREFECT_API_URL.value())
    db, home = s.fresh("reference")
    done = s.run(db, home, DAY)
    assert done.returncode == 0, done.stderr[-3000:]
    s.reference = (ledger(db), journeys_of(db))
    assert set(s.reference[0]["channel"].dropna()) >= {"sms", "advisor", "email", "push"}
    yield s
    s.http.close()
    s.smtp.close()


@st.composite
def kills(draw) -> tuple[str, int, str]:
    point = draw(st.sampled_from(POINTS))
    return point, draw(st.integers(1, REACHED[point])), "KILL"


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(kill=kills())
@example(kill=("sending", 25, "KILL"))  # mid-batch, with requests in flight
@example(kill=("claimed", 2, "KILL"))  # claimed, nothing sent: the rerun must not wait for the lease
@example(kill=("journeys entry", 1, "KILL"))
@example(kill=("feature state", 1, "KILL"))  # the moved state half written, on its thread
@example(kill=("sending", 40, "TERM"))  # a worker cancelling the run: it cleans up before it goes
def test_a_run_killed_anywhere_then_run_again_ends_as_if_never_interrupted(site, kill):
    point, nth, how = kill
    db, home = site.fresh("killed")
    first = site.run(db, home, DAY, crash=f"{point}:{nth}" + (":TERM" if how == "TERM" else ""))
    died = time.monotonic()
    if how == "KILL":
        assert first.returncode in (-9, 0), first.stderr[-3000:]  # killed, or the point came fewer than n times
    else:  # terminated: it stopped, and released what it held on the way out
        assert first.returncode != 0 and "Traceback" not in first.stderr.split("Finished in state")[-1]
        with open_warehouse(f"sqlite:///{db}").connect() as conn:
            t = touches.c
            assert conn.execute(select(t.touch_key).where(t.status == "planned", t.claimed_by.is_not(None))).all() == []
    handed = list(site.http.log) + list(site.smtp.log)
    again = site.run(db, home, DAY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "held by another run" not in again.stdout  # the dead run's claims were taken over at once

    reference_ledger, reference_journeys = site.reference
    got = ledger(db)
    pd.testing.assert_frame_equal(got, reference_ledger)
    pd.testing.assert_frame_equal(journeys_of(db), reference_journeys)
    sent = got[got["status"] == "sent"]
    key_of = resolver(db, got)
    counts = Counter(k for _, k in deliveries(site.http.log + site.smtp.log, home, key_of))
    assert set(counts) == set(sent["touch_key"])  # every sent touch arrived; nothing else did
    assert not got.duplicated(["customer_id", "step"]).any()  # one key per customer and step
    repeated = {k for k, n in counts.items() if n > 1}
    if first.returncode == 0 or point != "sending" or how == "TERM":
        assert not repeated, (point, nth, len(repeated))
    else:  # only what was handed over in the marker's last interval before the kill, or in flight then
        recent = {key_of(who) for t, who in handed if t >= died - Marker.FLUSH_SECONDS - SLACK}
        assert repeated <= recent, (len(repeated), len(recent))
