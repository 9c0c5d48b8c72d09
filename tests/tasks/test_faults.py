"""Fault injection: every channel type against a fake provider that misbehaves at message n, and our
own code raising or being interrupted at message n. After the provider heals and the run is repeated,
every planned touch is delivered once per key, or is a dead letter naming what went wrong; nothing is
left planned or claimed; repeats of a key are bounded by the requests in flight at the failure.

Hypothesis draws the channel, the fault, n, the concurrency and the batch size; the examples below the
decorator are draws that found bugs (kept so they are tried on every run).
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from flows.compiler import compile_file
from flows.plan import Plan
from infra.errors import DispatchError
from infra.settings import ChannelConfig, ProjectConfig
from infra.warehouse.db import open_warehouse, upgrade
from infra.warehouse.schema import claimants, customers, touches
from tasks import dispatch
from tasks.allocate import choose_tiers
from tasks.channels import email as email_channel
from tasks.channels import outbox as outbox_channel
from tasks.channels import webhook, wecom
from tests.tasks.fakes import HTTP_FAULTS, SMTP_FAULTS, WECOM_FAULTS, FakeHTTP, FakeSMTP

M = 24  # customers per draw
TIMEOUT = 0.3  # the channels' timeout; the fakes' slow replies take twice that
CLIENT_FAULTS = ("raise_before", "raise_after", "interrupt")
EXCEPTIONS = (ValueError, RuntimeError, KeyError, TypeError, AttributeError, ZeroDivisionError)
# channel type -> (channel name in the plan, consent channel, the provider's own faults)
CHANNELS = {"webhook": ("sms", "sms", HTTP_FAULTS), "wecom": ("advisor", "wecom", WECOM_FAULTS),
            "email": ("email", "email", SMTP_FAULTS), "outbox": ("push", "push", ())}
PLAYBOOK = """
name: faults_{kind}
model: none
segments:
  - name: rest
    else: true
    tiers:
      - {{channel: {channel}, template: t.{ext}}}
"""


class Interrupted(KeyboardInterrupt):
    """The injected interrupt (a Ctrl-C or a cancellation arriving mid-batch)."""


@dataclass
class World:
    root: Path
    engine: object
    http: FakeHTTP
    smtp: FakeSMTP
    plans: dict[str, Plan]
    day: dt.date = dt.date(2026, 1, 1)

    def config(self, concurrency: int) -> ProjectConfig:
        fast = {"timeout_seconds": TIMEOUT, "max_attempts": 3, "backoff_seconds": 0.01, "backoff_max_seconds": 0.02}
        return ProjectConfig(channels={
            "sms": ChannelConfig(type="webhook", url=f"{self.http.url}/send", concurrency=concurrency, **fast),
            "advisor": ChannelConfig(type="wecom", consent="wecom", base_url=self.http.url, corp_id=FakeHTTP.CORP,
                                     secret=FakeHTTP.SECRET, concurrency=concurrency, **fast),
            "email": ChannelConfig(type="email", host="127.0.0.1", port=self.smtp.port, starttls=False,
                                   from_address="shop@example.com", **fast),
            "push": ChannelConfig(type="outbox", path=str(self.root / "push.jsonl")),
        })

    def next_day(self) -> dt.date:
        self.day += dt.timedelta(days=1)
        return self.day


@pytest.fixture(scope="module")
def world():
    root = Path(tempfile.mkdtemp(prefix="faults-"))
    engine = open_warehouse(f"sqlite:///{root / 'w.db'}", create=True)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(customers.insert(), [{"customer_id": f"c{i:03d}", "signed_up_at": dt.datetime(2025, 1, 1),
                                           "timezone": "UTC", "email": f"c{i:03d}@example.com"} for i in range(M)])
    w = World(root, engine, FakeHTTP(slow_seconds=2 * TIMEOUT), FakeSMTP(slow_seconds=2 * TIMEOUT), {})
    (root / "templates").mkdir()
    (root / "templates" / "t.txt.j2").write_text("Hello {{ customer_id }}")
    (root / "templates" / "t.html.j2").write_text('<p>Hello</p><a href="{{ unsubscribe_url }}">unsubscribe</a>')
    for kind, (channel, _, _) in CHANNELS.items():
        path = root / f"faults_{kind}.yaml"
        path.write_text(PLAYBOOK.format(kind=kind, channel=channel, ext="html.j2" if kind == "email" else "txt.j2"))
        w.plans[kind] = compile_file(path, w.config(1))
    yield w
    w.http.close()
    w.smtp.close()


def allocated(plan: Plan, consent: str) -> pd.DataFrame:
    ids = [f"c{i:03d}" for i in range(M)]
    frame = pd.DataFrame({"segment": "rest", "monetary_365d": 0.0, "first_name": None, "churn_score": None,
                          "churn_reasons": None, "advisor_id": "A001"}, index=pd.Index(ids, name="customer_id"))
    return choose_tiers(frame, plan, {(c, consent, "marketing") for c in ids})


class Injector:
    """Our own code misbehaving at the n-th message (retries counted): raising before the request, raising
    after the provider accepted it, or interrupted (KeyboardInterrupt) there."""

    def __init__(self, kind: str, n: int, exc: type[Exception]) -> None:
        self.kind, self.n, self.exc, self.calls = kind, n, exc, 0

    def hit(self) -> bool:
        self.calls += 1
        return self.calls == self.n

    def raise_(self) -> None:
        if self.kind == "interrupt":
            raise Interrupted()
        raise self.exc(f"injected at message {self.n} for c@x.com\r\n")

    def patch(self, mp: pytest.MonkeyPatch, kind: str) -> None:
        inj = self
        if kind in ("webhook", "wecom"):
            module = webhook if kind == "webhook" else wecom
            real = module.http_request

            async def request(client, limiter, method, url, **kwargs):
                if "gettoken" in url or not inj.hit():
                    return await real(client, limiter, method, url, **kwargs)
                if inj.kind == "raise_before":
                    inj.raise_()
                reply = await real(client, limiter, method, url, **kwargs)
                inj.raise_()
                return reply

            mp.setattr(module, "http_request", request)
        elif kind == "email":
            real_send = email_channel.EmailChannel._send_one

            def send_one(channel, msg):
                if not inj.hit():
                    return real_send(channel, msg)
                if inj.kind == "raise_before":
                    inj.raise_()
                real_send(channel, msg)
                inj.raise_()

            mp.setattr(email_channel.EmailChannel, "_send_one", send_one)
        else:  # the outbox writes a batch at a time: message n is batch n
            real_write = outbox_channel.OutboxChannel._to_file

            def to_file(channel, messages, now):
                if not inj.hit():
                    return real_write(channel, messages, now)
                if inj.kind == "raise_before":
                    inj.raise_()
                real_write(channel, messages, now)
                inj.raise_()

            mp.setattr(outbox_channel.OutboxChannel, "_to_file", to_file)


def received(world: World, kind: str, keys: dict[str, str]) -> Counter:
    """Touch key -> times the provider accepted it (what reached the person)."""
    by_customer = {c: k for k, c in keys.items()}
    if kind == "webhook":
        return Counter(world.http.accepted)
    if kind == "wecom":
        return Counter(by_customer[c] for c in world.http.accepted)
    if kind == "email":
        return Counter(by_customer[a.split("@")[0]] for a in world.smtp.accepted)
    path = world.root / "push.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return Counter(m["touch_key"] for m in lines if m["touch_key"] in keys)


def ledger(world: World, plan: Plan, day: dt.date) -> pd.DataFrame:
    t = touches.c
    with world.engine.connect() as conn:
        rows = conn.execute(select(t.touch_key, t.customer_id, t.status, t.reason, t.claimed_by)
                            .where(t.playbook == plan.name, t.as_of == day)).all()
    return pd.DataFrame(rows, columns=["touch_key", "customer_id", "status", "reason", "claimed_by"])


def faults_for(kind: str) -> list[str]:
    return [*CHANNELS[kind][2], *CLIENT_FAULTS]


@st.composite
def cases(draw) -> tuple:
    """(channel type, fault, n, concurrency, batch size, exception class)."""
    kind = draw(st.sampled_from(sorted(CHANNELS)))
    fault = draw(st.sampled_from(faults_for(kind)))
    n = draw(st.integers(1, M if kind != "outbox" else 4))
    return (kind, fault, n, draw(st.sampled_from([1, 4])), draw(st.sampled_from([5, 50])),
            draw(st.sampled_from(EXCEPTIONS)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(case=cases())
@example(case=("email", "raise_before", 5, 1, 50, ValueError))  # smtplib's ValueError re-sent 92 of 96 mails
@example(case=("wecom", "errcode_oops", 3, 4, 50, ValueError))  # int("oops") left the whole batch claimed
@example(case=("webhook", "redirect", 2, 4, 5, ValueError))  # a 301 was recorded as delivered
@example(case=("webhook", "interrupt", 7, 4, 5, ValueError))  # claims left behind by an interrupt
@example(case=("outbox", "raise_after", 2, 1, 5, KeyError))  # a written batch left unrecorded
def test_a_fault_at_message_n_then_a_rerun_delivers_every_touch_once(world, case):
    kind, fault, n, concurrency, batch, exc = case
    plan = world.plans[kind]
    day = world.next_day()
    config = world.config(concurrency)
    frame = allocated(plan, CHANNELS[kind][1])
    provider = world.smtp if kind == "email" else world.http
    provider.reset((fault, n) if fault not in CLIENT_FAULTS else None)
    (world.root / "push.jsonl").unlink(missing_ok=True)

    def run():
        return dispatch.dispatch_frame(frame, plan, day, engine=world.engine, config=config, run_id="r",
                                       model_version=None, dry_run=False)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dispatch, "BATCH", batch)
        if fault in CLIENT_FAULTS:
            Injector(fault, n, exc).patch(mp, kind)
        try:
            run()
        except (DispatchError, Interrupted) as err:  # the provider is down or misconfigured, or Ctrl-C
            assert not isinstance(err, DispatchError) or err.code in ("L602", "L604", "L605"), err.render()
        first = ledger(world, plan, day)
        assert first.loc[first["status"] == "planned", "claimed_by"].isna().all(), "a run that ended holds no claim"
        provider.heal()
        again = run()  # the provider is back, the interrupt is over
    assert again.claimed_elsewhere == 0 and again.taken_over == 0  # nobody else was ever delivering

    rows = ledger(world, plan, day)
    keys = dict(zip(rows["touch_key"], rows["customer_id"]))  # rows[status] == planned would be claimable
    got = received(world, kind, keys)
    status = dict(zip(rows["touch_key"], rows["status"]))
    assert len(rows) == M and set(status.values()) <= {"sent", "failed"}, Counter(status.values())
    with world.engine.connect() as conn:
        assert conn.execute(select(claimants)).all() == []
    assert set(got) <= set(keys)  # nothing reached anyone that the ledger does not know
    for key, state in status.items():
        if state == "sent":
            assert got[key] >= 1, f"{key} marked sent but never reached the provider"
    failed = rows[rows["status"] == "failed"]
    assert len(failed) <= 1, failed  # only the message the fault hit
    assert all(got[k] <= 1 for k in failed["touch_key"])  # a dead letter is never sent again
    assert all(r.isprintable() and "@" not in r for r in failed["reason"])  # no control characters, no addresses
    bound = batch if kind == "outbox" else concurrency
    repeats = sum(n - 1 for n in got.values() if n > 1)
    assert repeats <= bound, (repeats, got.most_common(3))
    assert world.http.bad == []  # every request had the shape the API wants


def test_a_ledger_that_stops_answering_mid_batch_stops_the_channel(world):
    """A run that cannot record what it sends stops sending: the rest stays planned for the rerun, and
    nothing it sent is sent again."""
    from sqlalchemy.exc import OperationalError

    from tasks import claims

    plan, day = world.plans["webhook"], world.next_day()
    world.http.reset()
    config = world.config(1)
    config = config.model_copy(update={"channels": {**config.channels, "sms": config.channels["sms"].model_copy(
        update={"rate_per_second": 100.0})}})
    frame = allocated(plan, "sms")

    def run():
        return dispatch.dispatch_frame(frame, plan, day, engine=world.engine, config=config, run_id="r",
                                       model_version=None, dry_run=False)

    def gone(*args, **kwargs):
        raise OperationalError("UPDATE touches", {}, Exception("server closed the connection unexpectedly"))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(claims.Marker, "FLUSH_SECONDS", 0.05)
        mp.setattr(claims, "mark_sent", gone)
        with pytest.raises(DispatchError) as err:
            run()
    assert err.value.code == "L606" and "cannot be recorded" in err.value.message
    stopped_after = len(world.http.accepted)
    assert 0 < stopped_after < M  # it stopped early
    again = run()
    assert again.sent == {"sms": M - stopped_after} and again.already_sent == stopped_after
    assert Counter(world.http.accepted) == Counter({k: 1 for k in world.http.accepted})


def test_a_message_over_its_channels_limit_is_that_touchs_failure(world):
    """An SMS gateway's limit set in lifecycle.yaml, and WeCom's 4,000 bytes: the long message fails
    with its size, the others go out."""
    from infra.settings import MAX_MESSAGE_CHARS
    from tasks.sandbox import MAX_MESSAGE_CHARS as RENDER_LIMIT

    assert MAX_MESSAGE_CHARS == RENDER_LIMIT
    for kind, limit in (("webhook", 7), ("wecom", None)):
        plan, day = world.plans[kind], world.next_day()
        world.http.reset()
        config = world.config(1)
        name = CHANNELS[kind][0]
        config = config.model_copy(update={"channels": {**config.channels, name: config.channels[name].model_copy(
            update={"max_message_chars": limit})}})
        frame = allocated(plan, CHANNELS[kind][1])
        long_one = frame.index[3]
        frame["first_name"] = None
        if kind == "wecom":  # the template says Hello {{ customer_id }}: a customer id of 1,500 CJK characters
            frame = frame.rename(index={long_one: "客" * 1500})
            long_one = "客" * 1500
        result = dispatch.dispatch_frame(frame, plan, day, engine=world.engine, config=config, run_id="r",
                                         model_version=None, dry_run=False)
        rows = ledger(world, plan, day).set_index("customer_id")
        if kind == "webhook":  # "Hello c003" is 10 characters: every message is over 7
            assert result.failed == {"too_long": M} and result.sent == {name: 0}
            assert rows["reason"].str.contains("the limit is 7").all()
        else:
            assert result.failed == {"too_long": 1} and result.sent == {name: M - 1}
            assert rows.loc[long_one, "reason"].startswith("too_long: 4,506 bytes")
