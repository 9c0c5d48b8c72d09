"""Incremental features: keep each customer's aggregates in `feature_state` and move them a day at a time.

A run as of day D1 whose state is as of D0 < D1 reads only the rows that changed an aggregate: the
rows dated in [end(D0), end(D1)) (new) and, for every window boundary k days back, the rows dated in
[end(D0) - k, end(D1) - k) (entering or leaving a window). A window [end - a, end - b) then moves by
    value(D1) = value(D0) + sum over [end(D0) - b, end(D1) - b) - sum over [end(D0) - a, end(D1) - a),
which is exact for counts and, summed in whole cents, for money. Gaps between orders continue the
same left-to-right sum as a full recompute, so even the float sums match bit for bit. Only the
customers those rows touch are rewritten; the result equals `tasks.extract.extract_all` exactly
(tests/tasks/test_incremental.py, day by day, SQLite and PostgreSQL).

Rows are assumed to arrive in time order. The watermark keeps how many orders were dated before the
state's day and how many events fell in its 180-day window; when a recount differs (rows arrived
late, or were deleted), the run recomputes everything and starts a new state. A run for an earlier
day than the state's computes in full and leaves the state alone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import Float, cast, delete, func, select, update
from sqlalchemy.engine import Connection, Engine

from infra.warehouse.bulk import bulk_insert, chunks, utcnow
from infra.warehouse.schema import events, feature_state, feature_watermark, orders
from tasks.extract import (DAY_NS, ENGAGEMENT_TYPES, EVENT_COLUMNS, EVENT_SCAN_DAYS, ORDER_COLUMNS, Extract,
                           _frame, _stamp, day_end, extract_all, extract_customers, has_events)

NAME = "features"
# (a, b): the window [end - a days, end - b days) of each windowed aggregate
ORDER_WINDOWS = {"30d": (30, 0), "90d": (90, 0), "prev_90d": (180, 90), "180d": (180, 0), "365d": (365, 0)}
EVENT_WINDOWS = {"30d": (30, 0), "prev_30d": (60, 30)}
EVENT_KINDS = {"visits": "app.visit", "opens": "message.open", "clicks": "message.click", "group": "group.message"}
STATE_COLUMNS = [c.name for c in feature_state.c]


@dataclass(frozen=True)
class Mark:
    as_of: dt.date
    orders_before: int
    events_window: int


def extract_incremental(engine: Engine, as_of: dt.date) -> tuple[Extract, str]:
    """The same Extract as `extract_all(engine, as_of)`, from the kept state when it can be moved
    forward; and how it was made: "kept" (state already at as_of), "advanced", or "full" (why)."""
    with engine.connect() as conn:
        mark = _read_mark(conn)
        late = mark is not None and _counts(conn, day_end(mark.as_of)) != (mark.orders_before, mark.events_window)
        customers = extract_customers(conn, as_of)
        with_events = has_events(conn)
        if mark is not None and not late and mark.as_of <= as_of:
            state_orders, state_events = _read_state(conn)
    if mark is None or late or mark.as_of > as_of:
        raw = extract_all(engine, as_of)
        if mark is None or mark.as_of <= as_of:
            _save_full(engine, raw, mark)
        why = "no state yet" if mark is None else ("rows arrived late" if late else "as-of before the state")
        return raw, f"full ({why})"
    if mark.as_of == as_of:
        return Extract(as_of, customers, state_orders, state_events if with_events else None), "kept"
    with engine.connect() as conn:
        new_orders, new_events, touched = advance(conn, state_orders, state_events, mark.as_of, as_of)
        counts = _counts(conn, day_end(as_of))
    _save_touched(engine, new_orders, new_events, touched, mark, Mark(as_of, *counts))
    return Extract(as_of, customers, new_orders, new_events if with_events else None), "advanced"


def advance(conn: Connection, state_orders: pd.DataFrame, state_events: pd.DataFrame, start: dt.date,
            as_of: dt.date) -> tuple[pd.DataFrame, pd.DataFrame, pd.Index]:
    """Order and event aggregates moved from `start` to `as_of`, and the customers whose rows changed."""
    e0, e1 = day_end(start), day_end(as_of)
    o, o_touched = _advance_orders(conn, state_orders, e0, e1)
    e, e_touched = _advance_events(conn, state_events, e0, e1)
    return o, e, o_touched.union(e_touched)


def _band(conn: Connection, table, column, e0: dt.datetime, e1: dt.datetime, days: int, extra: dict,
          where=()) -> pd.DataFrame:
    """Rows dated in [e0 - days, e1 - days): (customer_id, t, the `extra` columns by name)."""
    lo, hi = e0 - dt.timedelta(days=days), e1 - dt.timedelta(days=days)
    stmt = select(table.c.customer_id, _stamp(conn, column), *extra.values()).where(column >= lo, column < hi, *where)
    return _frame(conn, stmt, ["customer_id", "t", *extra], stamps=("t",))


def _cents(values: pd.Series) -> pd.Series:
    return np.round(values.astype("float64") * 100.0)


def _advance_orders(conn: Connection, state: pd.DataFrame, e0: dt.datetime, e1: dt.datetime):
    o = orders.c
    bands = {k: _band(conn, orders, o.ordered_at, e0, e1, k, {"amount": cast(o.amount, Float)})
             for k in sorted({0, *(d for w in ORDER_WINDOWS.values() for d in w)})}
    for b in bands.values():
        b["cents"] = _cents(b["amount"])
    new = bands[0].sort_values(["customer_id", "t"], kind="stable")
    touched = pd.Index(pd.concat([b["customer_id"] for b in bands.values()]).unique(), dtype=object)
    s = state.set_index("customer_id")
    s = s.reindex(s.index.union(pd.Index(new["customer_id"].unique(), dtype=object)))
    counts = ["orders_total", *(f"orders_{w}" for w in ORDER_WINDOWS)]
    money = ["monetary_total", *(f"monetary_{w}" for w in ORDER_WINDOWS if f"monetary_{w}" in ORDER_COLUMNS)]
    s[counts] = s[counts].fillna(0).astype(np.int64)
    cents = {c: _cents(s[c].fillna(0.0)) for c in money}
    s["gap_sq_sum"] = s["gap_sq_sum"].fillna(0.0)

    pos = {k: s.index.get_indexer(b["customer_id"]) for k, b in bands.items()}

    def per_customer(k: int, value: str | None) -> np.ndarray:
        # cents are whole numbers: their float sums are exact in any order
        weights = None if value is None else bands[k][value].to_numpy(dtype="float64")
        return np.bincount(pos[k], weights=weights, minlength=len(s))

    s["orders_total"] += per_customer(0, None)
    cents["monetary_total"] += per_customer(0, "cents")
    for w, (a, b) in ORDER_WINDOWS.items():
        s[f"orders_{w}"] += per_customer(b, None) - per_customer(a, None)
        if f"monetary_{w}" in cents:
            cents[f"monetary_{w}"] += per_customer(b, "cents") - per_customer(a, "cents")
    for c in money:
        s[c] = cents[c] / 100.0
    if len(new):
        _append_gaps(s, new)
    s = s[s["orders_total"] > 0]
    return s.reset_index(names="customer_id")[ORDER_COLUMNS], touched


def _append_gaps(s: pd.DataFrame, new: pd.DataFrame) -> None:
    """First/last order and the gap statistics, continued with the new orders (sorted by customer, time).

    The squared gaps are added one by one in time order onto the kept sum (np.add.at is unbuffered,
    in index order), the very additions a full recompute's bincount makes, so the sums are identical.
    """
    pos = s.index.get_indexer(new["customer_id"])
    t = new["t"].to_numpy("datetime64[ns]").view("int64")
    previous = s["last_order_at"].to_numpy("datetime64[ns]").view("int64")[pos]
    had = ~np.isnat(s["last_order_at"].to_numpy("datetime64[ns]"))[pos]
    same = np.r_[False, pos[1:] == pos[:-1]]
    before = np.where(same, np.r_[t[:1], t[:-1]], previous)  # the order before each new one
    has_gap = same | had
    gap = np.where(has_gap, (t - np.where(has_gap, before, t)) / DAY_NS, 0.0)
    sq = s["gap_sq_sum"].to_numpy(dtype="float64").copy()
    np.add.at(sq, pos, gap * gap)
    s["gap_sq_sum"] = sq
    top = s["max_gap_days"].to_numpy(dtype="float64").copy()
    if has_gap.any():
        np.fmax.at(top, pos[has_gap], gap[has_gap])
    s["max_gap_days"] = top
    first = new.groupby("customer_id")["t"].min()
    last = new.groupby("customer_id")["t"].max()
    s.loc[first.index, "first_order_at"] = s.loc[first.index, "first_order_at"].fillna(first)
    s.loc[last.index, "last_order_at"] = last


def _advance_events(conn: Connection, state: pd.DataFrame, e0: dt.datetime, e1: dt.datetime):
    t = events.c
    kinds = [t.type.in_(ENGAGEMENT_TYPES)]
    bands = {k: _band(conn, events, t.occurred_at, e0, e1, k, {"type": t.type}, kinds)
             for k in sorted({0, *(d for w in EVENT_WINDOWS.values() for d in w)})}
    touched = pd.Index(pd.concat([b["customer_id"] for b in bands.values()]).unique(), dtype=object)
    s = state.set_index("customer_id")
    s = s.reindex(s.index.union(pd.Index(bands[0]["customer_id"].unique(), dtype=object)))
    count_cols = EVENT_COLUMNS[1:-1]
    s[count_cols] = s[count_cols].fillna(0).astype(np.int64)

    pos = {k: s.index.get_indexer(b["customer_id"]) for k, b in bands.items()}

    def per_customer(k: int, kind: str | None) -> np.ndarray:
        where = pos[k] if kind is None else pos[k][(bands[k]["type"] == kind).to_numpy()]
        return np.bincount(where, minlength=len(s))

    for w, (a, b) in EVENT_WINDOWS.items():
        s[f"engagement_{w}"] += per_customer(b, None) - per_customer(a, None)
    for name, kind in EVENT_KINDS.items():
        for w, (a, b) in EVENT_WINDOWS.items():
            if f"{name}_{w}" in s:
                s[f"{name}_{w}"] += per_customer(b, kind) - per_customer(a, kind)
    latest = bands[0].groupby("customer_id")["t"].max()
    s.loc[latest.index, "last_event_at"] = latest  # later than anything kept
    gone = s["last_event_at"] < pd.Timestamp(e1 - dt.timedelta(days=EVENT_SCAN_DAYS))
    touched = touched.union(s.index[gone.to_numpy()])
    s = s[s["last_event_at"].notna().to_numpy() & ~gone.to_numpy()]
    return s.reset_index(names="customer_id")[EVENT_COLUMNS], touched


def _counts(conn: Connection, end: dt.datetime) -> tuple[int, int]:
    """Orders dated before `end` and events in the 180 days before it (index-only counts)."""
    n_orders = conn.execute(select(func.count()).select_from(orders).where(orders.c.ordered_at < end)).scalar_one()
    n_events = conn.execute(select(func.count()).select_from(events).where(
        events.c.occurred_at >= end - dt.timedelta(days=EVENT_SCAN_DAYS), events.c.occurred_at < end)).scalar_one()
    return int(n_orders), int(n_events)


def _read_mark(conn: Connection) -> Mark | None:
    row = conn.execute(select(feature_watermark).where(feature_watermark.c.name == NAME)).mappings().first()
    if row is None:
        return None
    as_of = row["as_of"] if isinstance(row["as_of"], dt.date) else dt.date.fromisoformat(str(row["as_of"]))
    return Mark(as_of, int(row["orders_before"]), int(row["events_window"]))


def _read_state(conn: Connection) -> tuple[pd.DataFrame, pd.DataFrame]:
    cols = [_stamp(conn, feature_state.c[c]) if c.endswith("_at") else feature_state.c[c] for c in STATE_COLUMNS]
    frame = _frame(conn, select(*cols).order_by(feature_state.c.customer_id), STATE_COLUMNS,
                   stamps=tuple(c for c in STATE_COLUMNS if c.endswith("_at")))
    buyers = frame[frame["orders_total"] > 0].reset_index(drop=True)
    o = buyers[ORDER_COLUMNS].copy()
    for c in ORDER_COLUMNS[1:]:
        if c.startswith("orders_"):
            o[c] = o[c].astype(np.int64)
        elif not c.endswith("_at"):
            o[c] = o[c].astype("float64")
    e = frame[frame["last_event_at"].notna()].reset_index(drop=True)[EVENT_COLUMNS].copy()
    for c in EVENT_COLUMNS[1:-1]:
        e[c] = e[c].astype(np.int64)
    return o, e


def _state_rows(o: pd.DataFrame, e: pd.DataFrame) -> pd.DataFrame:
    """One row per customer with orders or recent events, in feature_state's columns."""
    rows = o.set_index("customer_id").join(e.set_index("customer_id"), how="outer")
    counts = [c for c in STATE_COLUMNS if c.startswith(("orders_", "visits_", "opens_", "clicks_", "group_",
                                                        "engagement_"))]
    rows[counts] = rows[counts].fillna(0).astype(np.int64)
    money = [c for c in STATE_COLUMNS if c.startswith("monetary_")]
    rows[money] = rows[money].fillna(0.0)
    rows["gap_sq_sum"] = rows["gap_sq_sum"].fillna(0.0)
    return rows.reset_index(names="customer_id")[STATE_COLUMNS]


def _save_full(engine: Engine, raw: Extract, old: Mark | None) -> None:
    """Replace the state with a full extract's aggregates, in one transaction."""
    events_frame = raw.events if raw.events is not None else pd.DataFrame(columns=EVENT_COLUMNS)
    with engine.begin() as conn:
        counts = _counts(conn, day_end(raw.as_of))
        conn.execute(delete(feature_state))
        bulk_insert(conn, feature_state, _state_rows(raw.orders, events_frame))
        _write_mark(conn, Mark(raw.as_of, *counts), old)


def _save_touched(engine: Engine, o: pd.DataFrame, e: pd.DataFrame, touched: pd.Index, old: Mark, new: Mark) -> None:
    """Rewrite the touched customers' rows and move the watermark, unless another run moved it first."""
    ids = list(touched)
    with engine.begin() as conn:
        moved = conn.execute(update(feature_watermark).where(
            feature_watermark.c.name == NAME, feature_watermark.c.as_of == old.as_of).values(
            as_of=new.as_of, orders_before=new.orders_before, events_window=new.events_window,
            updated_at=utcnow())).rowcount
        if not moved:  # a concurrent run got there first: its state is as good as ours
            return
        for part in chunks(ids):
            conn.execute(delete(feature_state).where(feature_state.c.customer_id.in_(list(part))))
        keep = set(ids)
        bulk_insert(conn, feature_state, _state_rows(o[o["customer_id"].isin(keep)], e[e["customer_id"].isin(keep)]))


def _write_mark(conn: Connection, mark: Mark, old: Mark | None) -> None:
    values = {"as_of": mark.as_of, "orders_before": mark.orders_before, "events_window": mark.events_window,
              "updated_at": utcnow()}
    if old is None:
        conn.execute(feature_watermark.insert().values(name=NAME, **values))
    else:
        conn.execute(update(feature_watermark).where(feature_watermark.c.name == NAME).values(**values))
