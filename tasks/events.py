"""Event-triggered playbooks: from rows landing in the warehouse to runs for the customers behind them.

The relay reads, per event type some playbook is triggered by (`trigger: {event: order.placed}`),
the events that arrived since its high-water mark (`event_watermarks`, event time, naive UTC) up to
a moment SETTLE ago (so rows still being committed are not skipped), and hands the window on:
- with a Prefect server, as one Prefect event `lifecycle.<type>` per window (payload: window_start,
  window_end, count; no customer data), which the playbook's deployment trigger turns into a run;
- without one (the embedded default), by running the triggered playbooks in this process.
A triggered run selects only the audience's customers who produced the event in its window; the
daily touch key and the re-entry rule keep a customer from being touched twice. The mark moves only
after the hand-over, so a crash repeats a window (harmless: keys) rather than losing one. The delay
from an event to its touch is the relay's interval plus one run. Rows that arrive with an event time
older than the mark are not triggered (the playbook's schedule, if any, still sees them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from infra.warehouse.bulk import among, chunks, utcnow
from flows.plan import Plan
from infra.warehouse.schema import event_watermarks, events, orders
from tasks.common import IO_RETRIES

SETTLE = dt.timedelta(seconds=30)
FIRST_LOOKBACK = dt.timedelta(minutes=15)  # where a relay that never ran starts reading
PREFECT_EVENT_PREFIX = "lifecycle."


def _source(event_type: str):
    """(customer column, time column, extra condition) of the table an event type lives in."""
    if event_type == "order.placed":
        return orders.c.customer_id, orders.c.ordered_at, None
    return events.c.customer_id, events.c.occurred_at, events.c.type == event_type


def count_between(engine: Engine, event_type: str, start: dt.datetime, end: dt.datetime) -> int:
    customer, at, extra = _source(event_type)
    stmt = select(func.count()).select_from(customer.table).where(at > start, at <= end)
    if extra is not None:
        stmt = stmt.where(extra)
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def producers(engine: Engine, event_type: str, start: dt.datetime, end: dt.datetime,
              within: list[str] | None = None) -> set[str]:
    """Customers with an event of this type in (start, end], optionally only those `within` a list."""
    customer, at, extra = _source(event_type)
    base = select(customer).where(at > start, at <= end).distinct()
    if extra is not None:
        base = base.where(extra)
    found: set[str] = set()
    with engine.connect() as conn:
        if within is None:
            return set(conn.execute(base).scalars())
        for part in chunks(within):
            found.update(conn.execute(base.where(among(customer, part))).scalars())
    return found


def read_until(engine: Engine, event_type: str) -> dt.datetime | None:
    w = event_watermarks.c
    with engine.connect() as conn:
        return conn.execute(select(w.read_until).where(w.event_type == event_type)).scalar_one_or_none()


def mark(engine: Engine, event_type: str, until: dt.datetime) -> None:
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(event_watermarks).values(event_type=event_type, read_until=until, updated_at=utcnow())
    stmt = stmt.on_conflict_do_update(index_elements=["event_type"],
                                      set_={"read_until": until, "updated_at": utcnow()})
    with engine.begin() as conn:
        conn.execute(stmt)


Handover = Callable[[str, dt.datetime, dt.datetime, int], None]


def relay(engine: Engine, event_types: set[str], hand_over: Handover, *, now: dt.datetime | None = None) -> dict:
    """Hand every event type's new window to `hand_over(type, start, end, count)`; returns the windows."""
    end = (now or utcnow()) - SETTLE
    windows = {}
    for event_type in sorted(event_types):
        start = read_until(engine, event_type) or end - FIRST_LOOKBACK
        if end <= start:
            continue
        n = count_between(engine, event_type, start, end)
        if n:
            hand_over(event_type, start, end, n)
        mark(engine, event_type, end)
        windows[event_type] = {"window_start": start.isoformat(), "window_end": end.isoformat(), "events": n}
    return windows


def prefect_event_name(event_type: str) -> str:
    return PREFECT_EVENT_PREFIX + event_type


def emit_window(event_type: str, start: dt.datetime, end: dt.datetime, count: int) -> None:
    """One Prefect event per window: what deployment triggers react to. Counts and times only."""
    from prefect.events import emit_event

    emit_event(event=prefect_event_name(event_type),
               resource={"prefect.resource.id": f"lifecycle.event-type.{event_type}",
                         "prefect.resource.name": event_type},
               payload={"window_start": start.isoformat(), "window_end": end.isoformat(), "count": count})


def keep_producers(engine: Engine, selected: pd.DataFrame, counts: dict, plan: Plan, window_start: str,
                   window_end: str) -> tuple[pd.DataFrame, dict]:
    """The selected customers who produced the trigger event in the window; the segments recounted."""
    start, end = dt.datetime.fromisoformat(window_start), dt.datetime.fromisoformat(window_end)
    ids = producers(engine, plan.trigger.event, start, end, within=list(selected.index)) if plan.trigger else set()
    keep = selected[selected.index.isin(list(ids))]
    segments = keep["segment"].value_counts()
    return keep, {**counts, "triggered_by": len(ids), "window": [window_start, window_end],
                  "segments": {name: int(segments.get(name, 0)) for name in counts["segments"]}}


@task(name="triggered", cache_policy=NO_CACHE, **IO_RETRIES)
def triggered(engine: Engine, selected: pd.DataFrame, counts: dict, plan: Plan, window_start: str,
              window_end: str) -> tuple[pd.DataFrame, dict]:
    return keep_producers(engine, selected, counts, plan, window_start, window_end)
