"""Deliver touches that quiet hours deferred, once they are due.

A touch deferred by quiet hours waits in the ledger as `deferred`, with `due_at` (when the quiet
hours end for the customer, naive UTC) and its message, rendered when it was decided. When it is due,
everything that could have changed since is checked again, just before the send:
- consent for its channel and purpose, and the suppression list: a withdrawal in the meantime wins
  (dropped, `no_consent` / `suppressed`);
- the frequency cap across playbooks, counting what was sent meanwhile (dropped, `frequency_cap`);
- its window: a deferred touch goes out in the customer's first allowed window after the quiet hours
  (from `due_at` to the next start of quiet hours, on their own clock) or not at all: once that window
  has passed it is dropped as `expired` rather than arriving a day late or in the night.
What passes goes `deferred` -> `planned` (a conditional UPDATE) and then through the same claim ->
send -> mark path as every other touch (tasks/dispatch.py `deliver`), so a crash or a concurrent
deliverer never sends it twice.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Engine

from flows.plan import QuietHours
from infra.settings import ProjectConfig
from infra.warehouse.bulk import among, chunks, utcnow
from infra.warehouse.schema import touches
from tasks.allocate import active_consents, suppressed_for
from tasks.dispatch import DispatchResult, counts_line, deliver, merge_results
from tasks.guardrails import next_quiet_start, sent_counts
from tasks.common import IO_RETRIES

log = logging.getLogger("lifecycle.dispatch")


def due_touches(engine: Engine, now: dt.datetime, playbook: str | None = None) -> pd.DataFrame:
    """Deferred touches due by `now` (and those a crashed deliverer left planned), oldest first."""
    t = touches.c
    where = [t.due_at.is_not(None), t.due_at <= now, or_(t.status == "deferred", t.status == "planned")]
    if playbook is not None:
        where.append(t.playbook == playbook)
    with engine.connect() as conn:
        rows = conn.execute(select(t.touch_key, t.customer_id, t.playbook, t.as_of, t.channel, t.status, t.due_at,
                                   t.payload).where(and_(*where)).order_by(t.due_at)).all()
    return pd.DataFrame(rows, columns=["touch_key", "customer_id", "playbook", "as_of", "channel", "status",
                                       "due_at", "payload"])


def payload_of(text: str | None) -> dict:
    """A deferred touch's payload; {} when there is none or it cannot be read (then it is dropped as
    `no_message` rather than stopping every delivery after it)."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _checks(engine: Engine, due: pd.DataFrame, now: dt.datetime) -> pd.Series:
    """Per due touch: why it may not go now, or None when it may."""
    payloads = [payload_of(p) for p in due["payload"]]
    ids = list(due["customer_id"].astype(str))
    why = pd.Series(None, index=due.index, dtype=object)
    why[[not isinstance(p.get("message"), dict) for p in payloads]] = "no_message"

    zones = pd.Series([p.get("timezone") for p in payloads], index=due.index, dtype=object)
    specs = pd.Series([json.dumps(p.get("quiet"), sort_keys=True) for p in payloads], index=due.index)
    for spec, group in specs.groupby(specs):
        if spec == "null":
            continue
        window_end = next_quiet_start(zones[group.index], pd.to_datetime(due.loc[group.index, "due_at"]),
                                      QuietHours(**json.loads(spec)))
        why[window_end.index[(window_end <= now).to_numpy()]] = "expired"

    pairs = {tuple(p["consent"]) for p in payloads if p.get("consent")}
    granted = active_consents(engine, ids, pairs, now) if pairs else set()
    blocked = suppressed_for(engine, ids)
    for i, (cid, p) in enumerate(zip(ids, payloads)):
        if pd.notna(why.iat[i]) or not p.get("consent"):
            continue
        channel, purpose = p["consent"]
        if (cid, channel, purpose) not in granted:
            why.iat[i] = "no_consent"
        elif (cid, None) in blocked or (cid, channel) in blocked:
            why.iat[i] = "suppressed"

    sent = _sent_since(engine, due, payloads, now.date())
    caps = np.array([(p.get("cap") or {}).get("max", np.inf) for p in payloads], dtype=float)
    why[why.isna().to_numpy() & (sent.to_numpy() >= caps)] = "frequency_cap"
    return why


def _sent_since(engine: Engine, due: pd.DataFrame, payloads: list[dict], today: dt.date) -> pd.Series:
    """Touches each customer was sent in their cap window ending today, any playbook."""
    windows = pd.Series([(p.get("cap") or {}).get("days") for p in payloads], index=due.index, dtype="Int64")
    out = pd.Series(0, index=due.index, dtype="int64")
    for days, rows in windows.dropna().groupby(windows.dropna()):
        ids = due.loc[rows.index, "customer_id"].astype(str)
        counts = sent_counts(engine, list(ids.unique()), today - dt.timedelta(days=int(days) - 1), today)
        out[rows.index] = counts.reindex(ids).fillna(0).to_numpy(dtype="int64")
    return out


def deliver_due_touches(engine: Engine, config: ProjectConfig, *, now: dt.datetime | None = None,
                        playbook: str | None = None) -> DispatchResult:
    """Send what is due, drop what may no longer go (with its reason), keep what is still in quiet hours."""
    now = now or utcnow()
    result = DispatchResult()
    due = due_touches(engine, now, playbook)
    if due.empty:
        return result
    waiting = due[due["status"] == "deferred"]
    why = _checks(engine, waiting, now) if len(waiting) else pd.Series(dtype=object)
    t = touches.c
    with engine.begin() as conn:
        for reason in sorted(set(why.dropna())):
            keys = list(waiting.loc[why == reason, "touch_key"])
            for part in chunks(keys):
                conn.execute(update(touches).where(among(t.touch_key, part), t.status == "deferred")
                             .values(status="dropped", reason=reason, updated_at=now))
            result.dropped[reason] = len(keys)
        go = list(waiting.loc[why.isna(), "touch_key"])
        for part in chunks(go):
            conn.execute(update(touches).where(among(t.touch_key, part), t.status == "deferred")
                         .values(status="planned", updated_at=now))
    ready = due[due["touch_key"].isin(go) | (due["status"] == "planned")]
    messages = {k: m for k, p in zip(ready["touch_key"], ready["payload"])
                if isinstance(m := payload_of(p).get("message"), dict)}
    ready = ready[ready["touch_key"].isin(messages)]
    deliver(engine, config, ready, lambda batch: pd.DataFrame([messages[k] for k in batch["touch_key"]]),
            result, "deferred touches")
    log.info("deferred touches due: %s", counts_line(result))
    return result


def replay_deliveries(engine: Engine, config: ProjectConfig, start: dt.datetime, end: dt.datetime,
                      step: dt.timedelta = dt.timedelta(hours=1)) -> DispatchResult:
    """Deliver deferred touches as an hourly deliverer would have from `start` to `end` (naive UTC): for
    replays of past days, such as the demo's month."""
    hours, now = [], start
    while now <= end:
        hours.append(deliver_due_touches(engine, config, now=now))
        now += step
    return merge_results(hours)


@task(name="deliver due", cache_policy=NO_CACHE, **IO_RETRIES)
def deliver_due(engine: Engine, config: ProjectConfig, playbook: str | None = None) -> DispatchResult:
    return deliver_due_touches(engine, config, playbook=playbook)
