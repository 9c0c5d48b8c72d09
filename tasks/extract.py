"""Extract: per-customer inputs as of a date, read in bounded chunks; one row per customer comes out.

Only data on or before the as-of date is read (the as-of day is included: everything before
midnight after it). Events, the big table, are aggregated in SQL (CASE sums in 30-day windows, which
every SQLAlchemy dialect runs). Orders come back as raw (customer, time, amount) rows in chunks and
are aggregated with numpy, which beats a SQL LAG window (gaps between orders) by about 4x on SQLite;
`tasks.source.FrameSource` uses the same numpy code on in-memory frames (a CSV file, no
warehouse), and tests hold the two equal. Rows skip SQLAlchemy's per-value processing: timestamps
cross as text (SQLite) or epoch seconds (PostgreSQL) and are parsed a column at a time.

Rows another tool wrote that no step can hold (infra/warehouse/limits.py: an order dated 0001-01-01
or 9999-12-31, an amount of infinity or NaN, a customer signed up outside 1900-2200) are left out by
the reads' own WHERE clauses, here, in the incremental state, in lookups and in the KPIs alike; a
birthday outside the window reads as unknown and an unknown timezone as UTC. `bad_rows` counts them
and names their keys, for the run's log and summary (`bad_rows`), instead of every run failing.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Float, String, and_, case, cast, exists, func, not_, select, type_coerce
from sqlalchemy.engine import Connection, Engine

from infra.warehouse import limits
from infra.warehouse.db import damage, display_url
from infra.warehouse.schema import customers, events, orders
from tasks.common import IO_RETRIES

ENGAGEMENT_TYPES = ("app.visit", "product.view", "message.open", "message.click", "group.message")
EVENT_SCAN_DAYS = 180  # last_event_days looks this far back; counts need only 60 days
DAY_NS = 86_400 * 10**9
CUSTOMER_COLUMNS = ["customer_id", "signed_up_at", "timezone", "member_tier", "points", "birthday",
                    "first_name", "advisor_id"]
CUSTOMER_TEXT = ("customer_id", "timezone", "member_tier", "first_name", "advisor_id")
ORDER_COLUMNS = ["customer_id", "orders_total", "monetary_total", "first_order_at", "last_order_at",
                 "orders_30d", "orders_90d", "orders_prev_90d", "orders_180d", "orders_365d",
                 "monetary_30d", "monetary_90d", "monetary_prev_90d", "monetary_365d",
                 "gap_sq_sum", "max_gap_days"]
EVENT_COLUMNS = ["customer_id", "visits_30d", "visits_prev_30d", "opens_30d", "clicks_30d", "group_30d",
                 "engagement_30d", "engagement_prev_30d", "last_event_at"]


@dataclass(frozen=True)
class Extract:
    """Raw per-customer inputs for the features step, all keyed by customer_id.

    `customers` is None when there is no customer table (orders alone: the buyers are the customers);
    `events` is None when there are no events, and the engagement features are then left out.
    """

    as_of: dt.date
    customers: pd.DataFrame | None
    orders: pd.DataFrame
    events: pd.DataFrame | None
    bad_rows: dict[str, int] = field(default_factory=dict, compare=False)  # what the reads left out (`bad_rows`)


def day_end(as_of: dt.date) -> dt.datetime:
    """The first instant after the as-of day; data strictly before it counts."""
    return dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time())


CHUNK_ROWS = 250_000  # rows fetched and converted at a time: bounds the Python objects alive at once


@dataclass(frozen=True)
class Shard:
    """Customers with lo <= customer_id < hi (None: unbounded), so a run can work in bounded slices."""

    lo: str | None = None
    hi: str | None = None

    def where(self, column) -> list:
        return [c for c in ((column >= self.lo) if self.lo is not None else None,
                            (column < self.hi) if self.hi is not None else None) if c is not None]


def _stamp(conn: Connection, column):
    """A timestamp in the form that crosses the driver fastest: SQLite's own text, PostgreSQL's epoch
    seconds (date_part is double precision), so no Python datetime is built per row."""
    if conn.dialect.name == "sqlite":
        return type_coerce(column, String)
    if conn.dialect.name == "postgresql":
        return func.date_part("epoch", column)
    return column


_EPOCH = dt.datetime(1970, 1, 1)
_WINDOW_SECONDS = ((limits.EARLIEST - _EPOCH).total_seconds(), (limits.LATEST - _EPOCH).total_seconds())


def _datetimes(values: pd.Series, dialect: str) -> pd.Series:
    """What `_stamp` sent back, as datetime64[ns]: NaT for NULL and for anything that is no time within
    limits.py's window (the reads' WHERE clauses leave such rows out; on SQLite a column may still hold
    text of any form), so one odd value never stops a run."""
    if dialect == "postgresql":
        seconds = pd.to_numeric(values, errors="coerce").astype("float64")
        seconds = seconds.where((seconds >= _WINDOW_SECONDS[0]) & (seconds < _WINDOW_SECONDS[1]))
        return pd.to_datetime((seconds * 1e6).round(), unit="us").astype("datetime64[ns]")
    parsed = pd.to_datetime(values, format="ISO8601" if dialect == "sqlite" else None, errors="coerce")
    inside = limits.in_window(parsed)
    return (parsed if inside.all() else parsed.where(inside)).astype("datetime64[ns]")


def _chunks(conn: Connection, stmt, columns: list[str], *, stamps: tuple[str, ...] = (),
            chunk: int | None = None) -> Iterator[pd.DataFrame]:
    """The statement's rows as frames of at most `chunk` rows, straight from the driver's cursor.

    SQLAlchemy renders the statement (values inline: dates, kinds and shard bounds, never user text);
    the rows skip its per-value result processing and pandas builds each frame from the driver's
    tuples, about 4x faster than from Row objects. PostgreSQL streams through a server-side cursor.
    """
    sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    raw = conn.connection.driver_connection
    postgres = conn.dialect.name == "postgresql"
    cursor = raw.cursor(name=f"lifecycle_{uuid.uuid4().hex[:12]}") if postgres else raw.cursor()
    try:
        try:
            cursor.execute(sql)
            rows = cursor.fetchmany(chunk or CHUNK_ROWS)
        except conn.dialect.loaded_dbapi.Error as exc:  # the driver's own: SQLAlchemy does not see these
            found = damage(exc, display_url(str(conn.engine.url)))
            if found is not None:
                raise found from exc
            raise
        while rows:
            frame = pd.DataFrame(rows, columns=columns)
            for c in stamps:
                frame[c] = _datetimes(frame[c], conn.dialect.name)
            yield frame
            rows = cursor.fetchmany(chunk or CHUNK_ROWS)
    finally:
        cursor.close()


def _frame(conn: Connection, stmt, columns: list[str], *, stamps: tuple[str, ...] = ()) -> pd.DataFrame:
    parts = list(_chunks(conn, stmt, columns, stamps=stamps))
    if not parts:
        empty = pd.DataFrame({c: pd.Series(dtype="datetime64[ns]" if c in stamps else object) for c in columns})
        return empty
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def extract_customers(conn, as_of: dt.date | None, shard: Shard | None = None, *, where=()) -> pd.DataFrame:
    """Customers signed up by the end of the as-of day (with as_of None: all of them), by customer id;
    `where`: further conditions on the customers table."""
    c = customers.c
    cols = [_stamp(conn, birthday(c.birthday)) if n == "birthday" else _stamp(conn, c[n]) if n == "signed_up_at"
            else c[n] for n in CUSTOMER_COLUMNS]
    signed = (c.signed_up_at < day_end(as_of),) if as_of is not None else ()
    stmt = (select(*cols).where(*signed, *limits.good_customers(), *(shard.where(c.customer_id) if shard else ()),
                                *where)
            .order_by(c.customer_id))
    return customer_types(_frame(conn, stmt, CUSTOMER_COLUMNS, stamps=("signed_up_at", "birthday")))


def birthday(column):
    """The birthday where it is a date within limits.py's window, else NULL (an unknown birthday)."""
    return case((and_(column >= limits.EARLIEST.date(), column < limits.LATEST.date()), column), else_=None)


def customer_types(frame: pd.DataFrame) -> pd.DataFrame:
    """One set of column types whatever the rows hold (a column of NULLs alone, or no rows, would
    otherwise come back as objects; points as integers or, with a NULL among them, floats), so
    customers read in parts and put together equal customers read at once."""
    for c in CUSTOMER_TEXT:
        if frame[c].dtype != "str":
            frame[c] = frame[c].astype("str")
    frame["points"] = frame["points"].astype("float64")
    return frame


def extract_orders(conn, as_of: dt.date, shard: Shard | None = None, *,
                   known: pd.Index | None = None) -> pd.DataFrame:
    """Orders up to the as-of day, read in chunks as (customer code, time, amount) arrays and
    aggregated with numpy: one pass, no per-customer Python, the frame source's own arithmetic.

    Reading the raw rows beats a GROUP BY with a LAG window (gaps between orders) in SQL by about
    4x on SQLite, and stays bounded: three numbers a row, customer ids kept once each. `known`: the
    customer ids already read (unique), so most rows are coded with one hash lookup.
    """
    o = orders.c
    stmt = select(o.customer_id, _stamp(conn, o.ordered_at), cast(o.amount, Float)).where(
        o.ordered_at < day_end(as_of), *limits.good_orders(), *(shard.where(o.customer_id) if shard else ()))
    ids = _Codes(known)
    codes, times, amounts = [], [], []
    for part in _chunks(conn, stmt, ["customer_id", "ordered_at", "amount"], stamps=("ordered_at",)):
        part = rows_with_times(part)
        codes.append(ids.encode(part["customer_id"].to_numpy()))
        times.append(part["ordered_at"].to_numpy("datetime64[ns]").view("int64"))
        amounts.append(part["amount"].to_numpy(dtype="float64"))
    code, names = ids.sorted(np.concatenate(codes) if codes else np.empty(0, dtype=np.int64))
    t = np.concatenate(times) if times else np.empty(0, dtype=np.int64)
    amount = np.concatenate(amounts) if amounts else np.empty(0, dtype="float64")
    order = np.lexsort((t, code))
    return order_aggregates(names, code[order], t[order], amount[order], pd.Timestamp(day_end(as_of)).value)


def rows_with_times(part: pd.DataFrame, time: str = "ordered_at") -> pd.DataFrame:
    """The rows whose time parsed (on SQLite a text column can hold anything the WHERE clause let by)."""
    ok = part[time].notna().to_numpy()
    return part if ok.all() else part[ok]


class _Codes:
    """Customer ids seen so far, each kept once; rows become integer codes chunk by chunk."""

    def __init__(self, known: pd.Index | None = None) -> None:
        self.index = pd.Index([], dtype=object) if known is None else pd.Index(known, dtype=object)
        self.grown = False

    def encode(self, ids: np.ndarray) -> np.ndarray:
        local, uniques = pd.factorize(ids)
        where = self.index.get_indexer(uniques)
        new = where < 0
        if new.any():
            where[new] = len(self.index) + np.arange(int(new.sum()))
            self.index = self.index.append(pd.Index(np.asarray(uniques, dtype=object)[new], dtype=object))
            self.grown = True
        return where[local].astype(np.int64)

    def sorted(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes renumbered in customer-id order, and the ids in that order."""
        names = self.index.to_numpy(dtype=object)
        if not self.grown and self.index.is_monotonic_increasing:
            return codes, names
        order = np.argsort(names, kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        return rank[codes], names[order]


def order_aggregates(ids: np.ndarray, code: np.ndarray, t: np.ndarray, amount: np.ndarray, end: int) -> pd.DataFrame:
    """Per-customer order aggregates (ORDER_COLUMNS) from orders sorted by (code, time), all before `end`.

    `ids[code]` names each row's customer; times are int64 nanoseconds. Shared by the warehouse and
    the in-memory source, so both compute every aggregate with the same arithmetic. Money is summed
    in whole cents, exactly (amounts carry two decimals), so a total kept up to date day by day
    (tasks/incremental.py) equals one summed afresh to the last bit.
    """
    n = len(ids)
    cents = np.round(amount * 100.0)
    count = np.bincount(code, minlength=n)
    present = count > 0
    age = end - t

    def total(mask=None, weights=None):
        w = weights if mask is None else (mask if weights is None else np.where(mask, weights, 0.0))
        return np.bincount(code, weights=w, minlength=n) if w is not None else count

    def within(days: int, until: int = 0):
        return (age <= days * DAY_NS) & (age > until * DAY_NS)

    # rows are sorted by (customer, time): a customer's first and last rows bound the run
    starts = np.cumsum(count) - count
    first = np.where(present, t[np.minimum(starts, max(len(t) - 1, 0))] if len(t) else 0, 0)
    last = np.where(present, t[np.maximum(starts + count - 1, 0)] if len(t) else 0, 0)
    same = np.r_[False, code[1:] == code[:-1]]
    gap = np.where(same, np.diff(t, prepend=t[:1]) / DAY_NS, 0.0)
    max_gap = np.full(n, -np.inf)
    np.maximum.at(max_gap, code[same], gap[same]) if same.any() else None
    frame = pd.DataFrame({
        "customer_id": ids,
        "orders_total": count,
        "monetary_total": total(weights=cents) / 100.0,
        "first_order_at": pd.to_datetime(first),
        "last_order_at": pd.to_datetime(last),
        "orders_30d": total(within(30)).astype(np.int64),
        "orders_90d": total(within(90)).astype(np.int64),
        "orders_prev_90d": total(within(180, 90)).astype(np.int64),
        "orders_180d": total(within(180)).astype(np.int64),
        "orders_365d": total(within(365)).astype(np.int64),
        "monetary_30d": total(within(30), cents) / 100.0,
        "monetary_90d": total(within(90), cents) / 100.0,
        "monetary_prev_90d": total(within(180, 90), cents) / 100.0,
        "monetary_365d": total(within(365), cents) / 100.0,
        "gap_sq_sum": np.bincount(code, weights=gap * gap, minlength=n),
        "max_gap_days": np.where(np.isfinite(max_gap), max_gap, np.nan),
    })
    return frame[present].reset_index(drop=True)


def extract_events(conn, as_of: dt.date, shard: Shard | None = None) -> pd.DataFrame:
    """Interaction counts in the last 30 days and the 30 before, by kind, and the last interaction.

    Aggregated in SQL (the events table is the big one: only one row per customer comes back), in
    two parts: counts and the latest interaction over the last 60 days, and only the latest one over
    the 120 days before (no counts there: about 60% of the rows need one MAX, not eight sums).
    Only engagement kinds are read; a customer with other kinds alone gets zeros either way.
    """
    return merge_events(_frame(conn, recent_events(conn, as_of, shard), EVENT_COLUMNS, stamps=("last_event_at",)),
                        _frame(conn, older_events(conn, as_of, shard), ["customer_id", "last_event_at"],
                               stamps=("last_event_at",)))


def recent_events(conn: Connection, as_of: dt.date, shard: Shard | None = None):
    """EVENT_COLUMNS from the engagement events of the 60 days up to the as-of day."""
    end = day_end(as_of)
    mid, start = end - dt.timedelta(days=30), end - dt.timedelta(days=60)
    t = events.c
    recent = t.occurred_at >= mid

    def count(condition):
        return func.sum(case((condition, 1), else_=0))

    return (
        select(
            t.customer_id,
            count(and_(recent, t.type == "app.visit")).label("visits_30d"),
            count(and_(~recent, t.type == "app.visit")).label("visits_prev_30d"),
            count(and_(recent, t.type == "message.open")).label("opens_30d"),
            count(and_(recent, t.type == "message.click")).label("clicks_30d"),
            count(and_(recent, t.type == "group.message")).label("group_30d"),
            count(recent).label("engagement_30d"),
            count(~recent).label("engagement_prev_30d"),
            _stamp(conn, func.max(t.occurred_at)).label("last_event_at"),
        )
        .where(t.occurred_at >= start, t.occurred_at < end, t.type.in_(ENGAGEMENT_TYPES),
               *(shard.where(t.customer_id) if shard else ()))
        .group_by(t.customer_id)
    )


def older_events(conn: Connection, as_of: dt.date, shard: Shard | None = None):
    """The latest engagement event between EVENT_SCAN_DAYS and 60 days before the end of the as-of day."""
    end = day_end(as_of)
    t = events.c
    return (
        select(t.customer_id, _stamp(conn, func.max(t.occurred_at)).label("last_event_at"))
        .where(t.occurred_at >= end - dt.timedelta(days=EVENT_SCAN_DAYS), t.occurred_at < end - dt.timedelta(days=60),
               t.type.in_(ENGAGEMENT_TYPES), *(shard.where(t.customer_id) if shard else ()))
        .group_by(t.customer_id)
    )


def merge_events(recent: pd.DataFrame, older: pd.DataFrame) -> pd.DataFrame:
    """One row per customer seen in either part: counts from the recent part (zero without), the
    latest interaction from the recent part when there is one (it is always later)."""
    only_older = older[~older["customer_id"].isin(recent["customer_id"])]
    frame = pd.concat([recent, only_older], ignore_index=True)
    for c in EVENT_COLUMNS[1:-1]:
        frame[c] = frame[c].fillna(0).astype(np.int64)
    return frame.sort_values("customer_id", ignore_index=True)[EVENT_COLUMNS]


def has_events(conn) -> bool:
    """Whether the warehouse records interactions at all (an empty events table means: no events data)."""
    return bool(conn.execute(select(exists().select_from(events))).scalar())


def extract_all(engine: Engine, as_of: dt.date, *, shard: Shard | None = None) -> Extract:
    """Customers, order and event aggregates as of a date; `shard` limits them to a range of ids.

    The two events aggregates run in the database on connections of their own while this thread
    reads the customers and orders: the database aggregates (without the GIL) while Python converts
    rows, so both cores work. Each read sees the data committed when it starts (READ COMMITTED on
    PostgreSQL, a WAL snapshot per statement on SQLite), as separate statements always did.
    """
    with engine.connect() as conn:
        if not has_events(conn):
            return Extract(as_of, extract_customers(conn, as_of, shard), extract_orders(conn, as_of, shard), None)

    def aggregate(statement, columns: list[str]) -> pd.DataFrame:
        with engine.connect() as conn:
            return _frame(conn, statement(conn, as_of, shard), columns, stamps=("last_event_at",))

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="extract") as pool:
        recent = pool.submit(aggregate, recent_events, EVENT_COLUMNS)
        older = pool.submit(aggregate, older_events, ["customer_id", "last_event_at"])
        with engine.connect() as conn:
            cust = extract_customers(conn, as_of, shard)
            ords = extract_orders(conn, as_of, shard, known=pd.Index(cust["customer_id"]))
        return Extract(as_of, cust, ords, merge_events(recent.result(), older.result()))


def last_order_day(engine: Engine) -> dt.date | None:
    """The day of the latest order every step can hold (an order dated 9999-12-31 is not the last one)."""
    with engine.connect() as conn:
        last = conn.execute(select(func.max(orders.c.ordered_at)).where(*limits.good_orders())).scalar()
    if last is None:
        return None
    return (last if isinstance(last, dt.datetime) else dt.datetime.fromisoformat(str(last))).date()


# ---- rows no step can hold ---------------------------------------------------------------------

log = logging.getLogger("lifecycle.extract")
SHOWN_KEYS = 5  # keys named per kind of bad row in the warning


def find_bad_rows(engine: Engine) -> tuple[dict[str, int], list[str]]:
    """What the reads leave out, or read as unknown, and a warning line per kind naming table and keys:
    {"orders": n, "customers": n} left out, {"customers.birthday": n} read as unknown. Counted in SQL
    (one scan of orders and one of customers, about 60 ms at 100,000 customers on SQLite, beside the
    reads), never row by row in Python; the keys are read only when there are some."""
    o, c = orders.c, customers.c
    window = f"outside {limits.WINDOW_TEXT}"
    kinds = {  # name: (table, key, condition, what)
        "orders": (orders, o.order_id, not_(and_(*limits.good_orders())),
                   f"ordered_at {window} or an amount that is not a finite number within "
                   f"±{limits.MAX_AMOUNT:,.2f}: left out"),
        "customers": (customers, c.customer_id, not_(and_(*limits.good_customers())),
                      f"signed_up_at {window}: left out"),
        "customers.birthday": (customers, c.customer_id, and_(c.birthday.is_not(None), birthday(c.birthday).is_(None)),
                               f"birthday {window}: read as unknown"),
    }
    counts: dict[str, int] = {}
    lines: list[str] = []
    with engine.connect() as conn:
        for table in (orders, customers):
            names = [n for n, k in kinds.items() if k[0] is table]
            sums = [func.coalesce(func.sum(case((kinds[n][2], 1), else_=0)), 0) for n in names]
            found = conn.execute(select(*sums).select_from(table)).one()
            for name, n in zip(names, found):
                if n:
                    _, key, bad, what = kinds[name]
                    keys = conn.execute(select(key).where(bad).order_by(key).limit(SHOWN_KEYS)).scalars().all()
                    counts[name] = int(n)
                    lines.append(_bad_line(name, int(n), key.name, keys, what))
    return counts, lines


ZONE_TEXT = "a timezone zoneinfo does not know: quiet hours and send times judged in UTC"


def find_bad_zones(customers_read: pd.DataFrame) -> tuple[dict[str, int], list[str]]:
    """Customers (of those read) whose timezone zoneinfo cannot load: one lookup per distinct name (the
    distinct names of a million customers in about 0.1 s), the rows only when some are bad."""
    zones = customers_read["timezone"]
    unknown = [z for z in zones.unique() if not pd.isna(z) and not limits.valid_zone(z)]
    if not unknown:
        return {}, []
    invalid = zones.isin(unknown).to_numpy()
    n, keys = int(invalid.sum()), customers_read["customer_id"][invalid].head(SHOWN_KEYS).tolist()
    return {"customers.timezone": n}, [_bad_line("customers.timezone", n, "customer_id", keys, ZONE_TEXT)]


def _bad_zones_in_table(engine: Engine) -> tuple[dict[str, int], list[str]]:
    """`find_bad_zones` over the whole customers table, by distinct name in SQL."""
    c = customers.c
    with engine.connect() as conn:
        zones = conn.execute(select(c.timezone, func.count()).group_by(c.timezone)).all()
        unknown = [z for z, _ in zones if not limits.valid_zone(z)]
        if not unknown:
            return {}, []
        keys = conn.execute(select(c.customer_id).where(c.timezone.in_(unknown)).order_by(c.customer_id)
                            .limit(SHOWN_KEYS)).scalars().all()
    n = sum(k for z, k in zones if z in unknown)
    return {"customers.timezone": n}, [_bad_line("customers.timezone", n, "customer_id", keys, ZONE_TEXT)]


def _bad_line(name: str, n: int, key: str, keys: list, what: str) -> str:
    table = name.split(".")[0]
    shown = ", ".join(repr(k) for k in keys) + (", ..." if n > len(keys) else "")
    return (f"{table}: {n:,} row{'s' if n != 1 else ''} with {what} ({key} {shown}); correct or delete them in the "
            "warehouse (`lifecycle data import` refuses such rows)")


def left_out(engine: Engine) -> dict[str, int]:
    """Every kind of bad row in the warehouse (`find_bad_rows`, timezones over the whole table), each
    logged as a warning: for runs that read in shards, whose extracts do not count them."""
    counts, lines = find_bad_rows(engine)
    zones, zone_lines = _bad_zones_in_table(engine)
    warn_bad_rows(lines + zone_lines)
    return {**counts, **zones}


def warn_bad_rows(lines: list[str]) -> None:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        logger = get_run_logger()
    except MissingContextError:
        logger = log
    for line in lines:
        logger.warning(line)


def future_order_customers(engine: Engine, start: dt.date, days: int, *, shard: Shard | None = None) -> set[str]:
    """Customers with an order in the `days` days after `start` (the churn label window)."""
    begin = day_end(start)
    stmt = (
        select(orders.c.customer_id)
        .where(orders.c.ordered_at >= begin, orders.c.ordered_at < begin + dt.timedelta(days=days),
               *(shard.where(orders.c.customer_id) if shard else ()))
        .distinct()
    )
    with engine.connect() as conn:
        return set(conn.execute(stmt).scalars())


INCREMENTAL_ENV = "LIFECYCLE_INCREMENTAL_FEATURES"


def incremental_features() -> bool:
    """Whether runs move the kept feature state forward (the default) or aggregate every row afresh
    (LIFECYCLE_INCREMENTAL_FEATURES=0, e.g. after editing past orders in place)."""
    return os.environ.get(INCREMENTAL_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@task(name="extract", cache_policy=NO_CACHE, **IO_RETRIES)
def extract(engine: Engine, as_of: dt.date, incremental: bool | None = None, keep_state: bool = True) -> Extract:
    """The run's inputs; unless `incremental` is False (default: `incremental_features()`) from the kept
    feature state moved forward to as_of (tasks/incremental.py), which gives the same Extract.
    `keep_state=False` (a dry run, which writes nothing) reads the kept state but leaves it as it was.
    Rows no step can hold are counted (`bad_rows`) and logged while the aggregates are read; only a
    transient database error is retried (tasks/common.py), never a data error."""
    if incremental is None:
        incremental = incremental_features()
    from prefect import get_run_logger

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bad-rows") as pool:
        audit = pool.submit(find_bad_rows, engine)  # database work, beside the reads
        if not incremental:
            raw = extract_all(engine, as_of)
        else:
            from tasks.incremental import extract_incremental

            raw, how = extract_incremental(engine, as_of, save=keep_state, background=True)  # the flow waits for it
            get_run_logger().info("aggregates as of %s from the incremental feature state: %s", as_of, how)
        counts, lines = audit.result()
    if raw.customers is not None:  # timezones: those of the customers this run read
        zones, zone_lines = find_bad_zones(raw.customers)
        counts, lines = {**counts, **zones}, lines + zone_lines
    warn_bad_rows(lines)
    return replace(raw, bad_rows=counts)
