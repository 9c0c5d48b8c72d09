"""KPIs the domain tracks, computed in the warehouse: active customers, repurchase, AOV, funnel, cohorts.

Every number is an SQL aggregate grouped by month or by monthly sign-up cohort, so only a few rows per
month (and per cohort x months since the first order) leave the database: a million customers cost
the database some scans, not Python memory. Months are calendar months in UTC; the period is the
months from `start` to `end`, with data up to the end of the `end` day.

- active customers: bought in the 90 days up to the month's end (or up to `end` in the last month);
- engaged: any interaction (visit, view, open, click, group message) in the month, when there are events;
- repurchase within 30 days: REPURCHASE_DEFINITION (one sentence, said the same way in the table,
  the JSON and the HTML);
- repeat rate: customers with 2+ orders among those with any order (up to `end`);
- funnel per sign-up cohort: signed up -> first order -> second order -> third or later;
- retention: the share of a cohort's buyers ordering in month k after the month of their first order,
  counted only where month k has been seen whole (first-order month + k <= the last complete month).

A month `end` cuts short (data to 7 December: 7 of 31 days) is partial: its row (and the cohort that
signed up in it) says so (`days`, `days_in_month`, `complete`), the outputs mark it and draw it apart,
and retention leaves it out, so the last month's few days never read as a fall. A cohort whose sign-up
month ended under COHORT_SETTLED_DAYS before `end` is still maturing (`age_days`, `settled`): its rates so
far are not comparable with older cohorts' (the funnel has had less time; the 30-day repurchase rate
counts its quickest first buyers only: August's read 57% in early September and 48% by December).

Orders and customers no step can hold (infra/warehouse/limits.py: dated 0001-01-01 or 9999-12-31, an
infinite amount) are left out here as in a run's extract, so one such row cannot skew every month or
break the charts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Integer, and_, case, cast, distinct, exists, func, select
from sqlalchemy.engine import Connection, Engine

from infra.errors import UsageError, WarehouseError
from infra.warehouse import limits
from infra.warehouse.schema import customers, events, orders
from tasks.extract import ENGAGEMENT_TYPES
from tasks.extract import last_order_day as _last_order_day

ACTIVE_DAYS = 90
REPURCHASE_DAYS = 30
REPURCHASE_DEFINITION = (f"a second order within {REPURCHASE_DAYS} days of the first, among customers whose first "
                         f"order is at least {REPURCHASE_DAYS} days before the period's end, so that each has had "
                         f"all {REPURCHASE_DAYS} days")
DEFAULT_MONTHS = 12
PERIOD_COLUMNS = ["days", "days_in_month", "complete"]  # how much of a month (or a cohort's sign-up month) is seen
COHORT_SETTLED_DAYS = 90  # days after its sign-up month before a cohort's rates are compared with older ones
MONTHLY_COLUMNS = ["month", "signups", "new_buyers", "buyers", "orders", "revenue", "aov", "active_90d", "engaged",
                   *PERIOD_COLUMNS]
COHORT_COLUMNS = ["cohort", "signed_up", "first_order", "second_order", "third_plus", "first_order_rate",
                  "repeat_rate", "third_plus_rate", "repurchase_30d_eligible",
                  "repurchase_30d", "repurchase_30d_rate", "orders", "revenue", "aov", *PERIOD_COLUMNS,
                  "age_days", "settled"]


@dataclass(frozen=True)
class Kpis:
    """The KPI tables for one period. `retention` is cohort x k (months since the first order), a share."""

    start: dt.date  # first day of the first month
    end: dt.date  # last day counted
    monthly: pd.DataFrame
    cohorts: pd.DataFrame
    retention: pd.DataFrame
    totals: dict[str, Any] = field(default_factory=dict)
    has_events: bool = False

    @property
    def partial(self) -> str | None:
        """The month `end` cuts short, as "2026-12 (7 of 31 days)", or None when every month is whole."""
        return partial_label(self.monthly.iloc[-1]) if len(self.monthly) and not self.monthly.iloc[-1]["complete"] \
            else None

    def to_json(self) -> dict[str, Any]:
        """Plain data: numbers rounded, missing values as null."""
        def records(frame: pd.DataFrame) -> list[dict]:
            return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]

        return {
            "from": self.start.isoformat(), "to": self.end.isoformat(), "has_events": self.has_events,
            "definitions": {"active_days": ACTIVE_DAYS, "repurchase_days": REPURCHASE_DAYS, "months": "calendar, UTC",
                            "repurchase_30d": REPURCHASE_DEFINITION,
                            "complete": "false for a month the period's end cuts short (and the cohort that signed "
                                        "up in it): not comparable with whole months; retention leaves it out",
                            "settled": f"false for a cohort whose sign-up month ended under {COHORT_SETTLED_DAYS} "
                                       "days before the period's end (age_days): its rates are still moving"},
            "partial_month": self.partial,
            "totals": {k: _plain(v) for k, v in self.totals.items()},
            "monthly": records(self.monthly),
            "cohorts": records(self.cohorts),
            "retention": {c: {str(k): _plain(v) for k, v in row.items() if not pd.isna(v)}
                          for c, row in self.retention.iterrows()},
        }


def _plain(v: Any) -> Any:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return round(float(v), 4)
    return v


# ---- the period --------------------------------------------------------------------------------

def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def add_months(day: dt.date, n: int) -> dt.date:
    """The first day of the month n months after `day`'s month."""
    index = day.year * 12 + day.month - 1 + n
    return dt.date(index // 12, index % 12 + 1, 1)


def _index(day: dt.date) -> int:
    return day.year * 12 + day.month - 1


def _label(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def _instant(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time())


def _seen(index: int, end: dt.date) -> tuple[int, int]:
    """(days of month `index` up to `end`, days in that month)."""
    first = dt.date(index // 12, index % 12 + 1, 1)
    days_in_month = (add_months(first, 1) - first).days
    return (days_in_month if index < _index(end) else end.day), days_in_month


def _with_period(frame: pd.DataFrame, end: dt.date) -> pd.DataFrame:
    """`days`, `days_in_month` and `complete` for each row's month (the `index` column)."""
    seen = [_seen(int(i), end) for i in frame["index"]]
    frame["days"] = pd.Series([d for d, _ in seen], index=frame.index, dtype="int64")
    frame["days_in_month"] = pd.Series([n for _, n in seen], index=frame.index, dtype="int64")
    frame["complete"] = frame["days"] == frame["days_in_month"]
    return frame


def last_complete_month(end: dt.date) -> int:
    """The month index of the last month seen whole up to `end`."""
    return _index(end) if (end + dt.timedelta(days=1)).day == 1 else _index(end) - 1


def partial_label(row: Any, key: str = "month") -> str:
    """"2026-12 (7 of 31 days)" for a month the period cuts short, "2026-10 (maturing)" for a cohort not yet
    settled, else the month alone."""
    if not row["complete"]:
        return f"{row[key]} ({int(row['days'])} of {int(row['days_in_month'])} days)"
    return f"{row[key]} (maturing)" if "settled" in row and not row["settled"] else str(row[key])


def last_order_day(engine: Engine) -> dt.date | None:
    return _last_order_day(engine)


def period(engine: Engine, start: dt.date | None, end: dt.date | None) -> tuple[dt.date, dt.date]:
    """(first day of the first month, last day): default the 12 months up to the last whole day of orders
    (the last order's day, or yesterday (UTC) when orders are still coming in today)."""
    if end is None:
        end = last_order_day(engine)
        if end is None:
            raise WarehouseError("the warehouse has no orders, so there are no KPIs to compute",
                                 hint="import orders (`lifecycle data import orders FILE.csv`) or run "
                                      "`lifecycle data generate`", code="L408")
        end = min(end, dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1))
    first = month_start(start) if start else add_months(end, -(DEFAULT_MONTHS - 1))
    if first > end:
        raise UsageError(f"--from {start} is after --to {end}", hint="give --from on or before --to "
                         "(dates are YYYY-MM-DD; the period covers whole calendar months from --from's month)",
                         code="L332")
    return first, end


# ---- SQL in the dialect's own date arithmetic --------------------------------------------------

def _month_index(conn: Connection, column):
    """year * 12 + month - 1 of a timestamp, as an integer (months compare and subtract as numbers)."""
    if conn.dialect.name == "sqlite":
        return cast(func.strftime("%Y", column), Integer) * 12 + cast(func.strftime("%m", column), Integer) - 1
    return cast(func.extract("year", column), Integer) * 12 + cast(func.extract("month", column), Integer) - 1


def _days(conn: Connection, column):
    """A timestamp as fractional days, for differences between two of them."""
    if conn.dialect.name == "sqlite":
        return func.julianday(column)
    return func.extract("epoch", column) / 86400.0


def _rows(conn: Connection, stmt) -> list[tuple]:
    return [tuple(r) for r in conn.execute(stmt)]


# ---- the KPIs ----------------------------------------------------------------------------------

def compute(engine: Engine, start: dt.date | None = None, end: dt.date | None = None) -> Kpis:
    """All the KPI tables for the months from `start`'s month to `end`, in one read-only transaction."""
    first, end = period(engine, start, end)
    stop = _instant(end + dt.timedelta(days=1))  # data strictly before this counts
    with engine.connect() as conn:
        with_events = bool(conn.execute(select(exists().select_from(events))).scalar())
        monthly = _monthly(conn, first, end, stop, with_events)
        cohorts, retention = _cohorts(conn, first, end, stop)
    totals = _totals(cohorts, monthly)
    return Kpis(first, end, monthly, cohorts, retention, totals, with_events)


def _monthly(conn: Connection, first: dt.date, end: dt.date, stop: dt.datetime, with_events: bool) -> pd.DataFrame:
    lo, hi = _index(first), _index(end)
    months = pd.DataFrame({"index": range(lo, hi + 1)})
    begin = _instant(first)
    o, c = orders.c, customers.c

    om = _month_index(conn, o.ordered_at)
    good = limits.good_orders()
    sales = _rows(conn, select(om, func.count(), func.count(distinct(o.customer_id)), func.sum(o.amount))
                  .where(o.ordered_at >= begin, o.ordered_at < stop, *good).group_by(om))
    cm = _month_index(conn, c.signed_up_at)
    signups = _rows(conn, select(cm, func.count()).where(c.signed_up_at >= begin, c.signed_up_at < stop).group_by(cm))
    firsts = select(o.customer_id, func.min(o.ordered_at).label("first_at")).where(o.ordered_at < stop, *good) \
        .group_by(o.customer_id).subquery()
    fm = _month_index(conn, firsts.c.first_at)
    new = _rows(conn, select(fm, func.count()).where(firsts.c.first_at >= begin).group_by(fm))

    active = []
    for index in range(lo, hi + 1):
        # the month's end, or the period's end in its last month
        until = min(_instant(add_months(dt.date(index // 12, index % 12 + 1, 1), 1)), stop)
        n = conn.execute(select(func.count(distinct(o.customer_id)))
                         .where(o.ordered_at >= until - dt.timedelta(days=ACTIVE_DAYS), o.ordered_at < until,
                                *good)).scalar()
        active.append((index, int(n or 0)))
    engaged: list[tuple] = []
    if with_events:
        e = events.c
        em = _month_index(conn, e.occurred_at)
        engaged = _rows(conn, select(em, func.count(distinct(e.customer_id)))
                        .where(e.occurred_at >= begin, e.occurred_at < stop, e.type.in_(ENGAGEMENT_TYPES)).group_by(em))

    def join(frame: pd.DataFrame, rows: list[tuple], names: list[str]) -> pd.DataFrame:
        other = pd.DataFrame(rows, columns=["index", *names])
        other["index"] = other["index"].astype("int64")
        return frame.merge(other, on="index", how="left")

    out = join(months, sales, ["orders", "buyers", "revenue"])
    out = join(out, signups, ["signups"])
    out = join(out, new, ["new_buyers"])
    out = join(out, active, ["active_90d"])
    out = join(out, engaged, ["engaged"]) if with_events else out.assign(engaged=pd.NA)
    for col in ("orders", "buyers", "signups", "new_buyers", "active_90d"):
        out[col] = out[col].fillna(0).astype("int64")
    out["revenue"] = out["revenue"].astype("float64").fillna(0.0).round(2)
    out["aov"] = (out["revenue"] / out["orders"].replace(0, np.nan)).round(2)
    if with_events:
        out["engaged"] = out["engaged"].fillna(0).astype("int64")
    out["month"] = out["index"].map(_label)
    return _with_period(out, end)[MONTHLY_COLUMNS]


def _cohorts(conn: Connection, first: dt.date, end: dt.date, stop: dt.datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per sign-up cohort: funnel, repurchase, AOV; and the retention triangle."""
    c, o = customers.c, orders.c
    begin = _instant(first)
    in_cohorts = and_(c.signed_up_at >= begin, c.signed_up_at < stop)
    members = select(c.customer_id).where(in_cohorts)
    # orders of the cohorts' customers, numbered per customer, with the month of each
    month = _month_index(conn, o.ordered_at)
    ranked = (
        select(o.customer_id, o.ordered_at, o.amount,
               func.row_number().over(partition_by=o.customer_id, order_by=(o.ordered_at, o.order_id)).label("rn"),
               month.label("m"), func.min(month).over(partition_by=o.customer_id).label("m0"))
        .where(o.ordered_at < stop, o.customer_id.in_(members), *limits.good_orders())
        .subquery()
    )
    r = ranked.c
    per = (
        select(r.customer_id, func.count().label("n"), func.sum(r.amount).label("revenue"),
               func.min(r.ordered_at).label("first_at"),
               func.max(case((r.rn == 2, r.ordered_at), else_=None)).label("second_at"))
        .group_by(r.customer_id)
        .subquery()
    )
    p = per.c
    cohort = _month_index(conn, c.signed_up_at).label("cohort")
    seen_30 = p.first_at < stop - dt.timedelta(days=REPURCHASE_DAYS)
    fast = and_(seen_30, p.second_at.is_not(None),
                _days(conn, p.second_at) - _days(conn, p.first_at) <= REPURCHASE_DAYS)

    def count(condition):
        return func.sum(case((condition, 1), else_=0))

    stmt = (
        select(cohort, func.count(), func.count(p.customer_id), count(p.n >= 2), count(p.n >= 3),
               count(seen_30), count(fast), func.coalesce(func.sum(p.n), 0), func.coalesce(func.sum(p.revenue), 0))
        .select_from(customers.outerjoin(per, p.customer_id == c.customer_id))
        .where(in_cohorts)
        .group_by(cohort)
    )
    cols = ["index", "signed_up", "first_order", "second_order", "third_plus", "repurchase_30d_eligible",
            "repurchase_30d", "orders", "revenue"]
    frame = pd.DataFrame(_rows(conn, stmt), columns=cols)
    for col in cols[:-1]:
        frame[col] = frame[col].astype("int64")
    frame["revenue"] = frame["revenue"].astype("float64").round(2)
    frame = frame.sort_values("index").reset_index(drop=True)
    frame["cohort"] = frame["index"].map(_label)
    frame = _with_period(_rates(frame), end)
    month_ends = [add_months(dt.date(int(i) // 12, int(i) % 12 + 1, 1), 1) - dt.timedelta(days=1)
                  for i in frame["index"]]
    frame["age_days"] = pd.Series([max((end - last).days, 0) for last in month_ends], index=frame.index, dtype="int64")
    frame["settled"] = frame["complete"] & (frame["age_days"] >= COHORT_SETTLED_DAYS)

    # retention: distinct buyers per (cohort, months since their first-order month), and how many
    # buyers of each cohort had that month in view (joins go from the orders to customers' primary key:
    # joining two derived tables would be quadratic in SQLite)
    k = (r.m - r.m0).label("k")
    by_customer = ranked.join(customers, c.customer_id == r.customer_id)
    retained = _rows(conn, select(cohort, r.m0, k, func.count(distinct(r.customer_id))).select_from(by_customer)
                     .group_by(cohort, r.m0, k))
    starts = _rows(conn, select(cohort, r.m0, func.count()).select_from(by_customer).where(r.rn == 1)
                   .group_by(cohort, r.m0))
    return frame[COHORT_COLUMNS + ["index"]].drop(columns="index"), _retention(retained, starts,
                                                                                last_complete_month(end))


def _rates(frame: pd.DataFrame) -> pd.DataFrame:
    def share(num: str, den: str) -> pd.Series:
        return (frame[num] / frame[den].replace(0, np.nan)).round(4)

    frame["first_order_rate"] = share("first_order", "signed_up")
    frame["repeat_rate"] = share("second_order", "first_order")  # first -> second order
    frame["third_plus_rate"] = share("third_plus", "second_order")
    frame["repurchase_30d_rate"] = share("repurchase_30d", "repurchase_30d_eligible")
    frame["aov"] = (frame["revenue"] / frame["orders"].replace(0, np.nan)).round(2)
    return frame


def _retention(retained: list[tuple], starts: list[tuple], last: int) -> pd.DataFrame:
    """Share of a cohort's buyers ordering k months after their first-order month, among those whose month k
    is seen whole (`last`: the last complete month): a month the period cuts short counts for nobody."""
    if not starts:
        return pd.DataFrame(dtype="float64")
    s = pd.DataFrame(starts, columns=["cohort", "m0", "n"]).astype("int64")
    ret = pd.DataFrame(retained, columns=["cohort", "m0", "k", "n"]).astype("int64")
    ret = ret[ret["m0"] + ret["k"] <= last]
    horizon = last - int(s["m0"].min())
    out = {}
    for cohort, group in s.groupby("cohort"):
        m0, n = group["m0"].to_numpy(), group["n"].to_numpy()
        got = ret[ret["cohort"] == cohort].groupby("k")["n"].sum()
        row = {}
        for k in range(horizon + 1):
            eligible = int(n[m0 + k <= last].sum())
            row[k] = round(float(got.get(k, 0)) / eligible, 4) if eligible else np.nan
        out[_label(int(cohort))] = row
    frame = pd.DataFrame.from_dict(out, orient="index").sort_index()
    frame.index.name = "cohort"
    return frame.dropna(axis=1, how="all")


def _totals(cohorts: pd.DataFrame, monthly: pd.DataFrame) -> dict[str, Any]:
    """The whole period's funnel and rates (cohorts summed), and the latest month's activity."""
    s = cohorts[["signed_up", "first_order", "second_order", "third_plus", "repurchase_30d_eligible",
                 "repurchase_30d", "orders", "revenue"]].sum()

    def share(a: float, b: float) -> float | None:
        return round(float(a) / float(b), 4) if b else None

    last = monthly.iloc[-1] if len(monthly) else None
    return {
        "signed_up": int(s["signed_up"]), "first_order": int(s["first_order"]), "second_order": int(s["second_order"]),
        "third_plus": int(s["third_plus"]),
        "first_order_rate": share(s["first_order"], s["signed_up"]),
        "repeat_rate": share(s["second_order"], s["first_order"]),
        "repurchase_30d_rate": share(s["repurchase_30d"], s["repurchase_30d_eligible"]),
        "aov": round(float(monthly["revenue"].sum() / monthly["orders"].sum()), 2) if monthly["orders"].sum() else None,
        "orders": int(monthly["orders"].sum()), "revenue": round(float(monthly["revenue"].sum()), 2),
        "active_90d_latest": int(last["active_90d"]) if last is not None else 0,
        "latest_month": str(last["month"]) if last is not None else None,
        "latest_month_complete": bool(last["complete"]) if last is not None else None,
    }


@task(name="kpis", cache_policy=NO_CACHE)
def kpis(engine: Engine, start: dt.date | None = None, end: dt.date | None = None) -> Kpis:
    return compute(engine, start, end)
