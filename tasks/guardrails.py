"""Guardrails as plain vectorised functions: holdout, variants, frequency cap, quiet hours, priority order.

Both the flow's allocate step and `lifecycle plan` use these, so a preview and the real run decide
alike. Everything is deterministic: the same customers, plan and as-of date give the same answer.
Only `recent_sends` reads the warehouse (the touch ledger); the rest is pure.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
import zoneinfo
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sqlalchemy import and_, func, not_, select
from sqlalchemy.engine import Connection, Engine

from flows.plan import Plan, QuietHours, VariantPlan
from infra.settings import ControlGroup
from infra.warehouse.bulk import IdSet, lookup
from infra.warehouse.limits import valid_zone
from infra.warehouse.schema import touches

log = logging.getLogger("lifecycle.guardrails")
DEFAULT_SEND_TIME = dt.time(10, 0)  # UTC, for playbooks without a schedule
SAME_DAY_HOURS = 18  # a run this close to its scheduled instant acts today, not as a replay


def buckets(ids: Sequence[str], *parts: str) -> np.ndarray:
    """A stable number in [0, 100) per customer for the salt `parts`: same inputs, same bucket."""
    prefix = ("|".join(parts) + "|").encode()
    sha = hashlib.sha256
    heads = b"".join([sha(prefix + str(c).encode()).digest()[:8] for c in np.asarray(ids, dtype=object).tolist()])
    return (np.frombuffer(heads, dtype=">u8") % 10_000) / 100  # the digest's first 8 bytes, big-endian


def held_out(ids: Sequence[str], plan: Plan) -> np.ndarray:
    """Customers in the control group: a hash of (customer, playbook, salt) below the holdout percent."""
    e = plan.experiment
    if e is None or e.holdout_percent <= 0:
        return np.zeros(len(ids), dtype=bool)
    return buckets(ids, "holdout", plan.name, e.salt) < e.holdout_percent


def in_control_group(ids: Sequence[str], plan: Plan, control: ControlGroup | None) -> np.ndarray:
    """The global control group (lifecycle.yaml `control_group`): a hash of (customer, salt) alone, so the
    same customers sit out every marketing playbook; playbooks with only service messages are not held back."""
    tiers = [t for s in plan.segments for t in s.tiers] + [t for f in plan.follow_ups for t in f.tiers]
    if control is None or control.percent <= 0 or not any(t.purpose == "marketing" for t in tiers):
        return np.zeros(len(ids), dtype=bool)
    return buckets(ids, "control", control.salt) < control.percent


def pick_variants(ids: Sequence[str], plan: Plan, where: str, variants: Sequence[VariantPlan]) -> np.ndarray:
    """Each customer's variant by cumulative split over a stable bucket (independent of the holdout's)."""
    if not variants:
        return np.full(len(ids), None, dtype=object)
    salt = plan.experiment.salt if plan.experiment else plan.name
    b = buckets(ids, "variant", plan.name, salt, where)
    edges = np.cumsum([v.split for v in variants])
    index = np.minimum(np.searchsorted(edges, b, side="right"), len(variants) - 1)
    return np.array([v.name for v in variants], dtype=object)[index]


def send_instant(plan: Plan, as_of: dt.date, now: dt.datetime | None = None) -> dt.datetime:
    """When this run's messages go out (aware): the schedule's first time on the as-of day, else 10:00 UTC.

    A run for today started at another time (a manual or triggered run, a retry) sends at `now`, so
    quiet hours are judged when the messages really arrive; a replay of a day long past (or a plan for
    a day ahead) keeps the scheduled instant.
    """
    if plan.schedule is None:
        scheduled = dt.datetime.combine(as_of, DEFAULT_SEND_TIME, tzinfo=dt.UTC)
    else:
        from cronsim import CronSim

        tz = zoneinfo.ZoneInfo(plan.schedule.timezone)
        start = dt.datetime.combine(as_of, dt.time(), tzinfo=tz) - dt.timedelta(seconds=1)
        scheduled = next(CronSim(plan.schedule.cron, start))
    if now is not None and abs(now - scheduled) < dt.timedelta(hours=SAME_DAY_HOURS):
        return now.astimezone(scheduled.tzinfo)
    return scheduled


def is_live(plan: Plan, as_of: dt.date, now: dt.datetime) -> bool:
    """Does a run for `as_of` happen now (not a replay of a day long past)? Only a live run delivers
    deferred touches on the wall clock; a replay leaves them for `lifecycle deliver` at their time."""
    return send_instant(plan, as_of, now) == now.astimezone(send_instant(plan, as_of).tzinfo)


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


@functools.lru_cache(maxsize=4096)
def zone(name: str) -> dt.tzinfo:
    """The customer's timezone; an unknown or malformed name ('America' is a folder of zones, not one)
    is judged in UTC, with a warning once per name (the run's extract counts such customers)."""
    if not valid_zone(name):
        log.warning("timezone %r is not one zoneinfo knows: quiet hours and send times for its customers are "
                    "judged in UTC", name)
        return dt.UTC
    return zoneinfo.ZoneInfo(name)


def in_quiet_hours(timezones: pd.Series, at: dt.datetime, quiet: QuietHours) -> np.ndarray:
    """True where `at` falls in the quiet window in the customer's own timezone (unknown zones: UTC)."""
    codes, names = _zone_codes(timezones)
    return _quiet_in(names, at, quiet)[codes]


def quiet_ends(timezones: pd.Series, at: dt.datetime, quiet: QuietHours) -> pd.Series:
    """When quiet hours that hold at `at` end in each customer's timezone, as naive UTC (NaT when not quiet)."""
    end_h, end_m = divmod(_minutes(quiet.end), 60)
    codes, names = _zone_codes(timezones)
    ends = np.full(len(names), np.datetime64("NaT"), dtype="datetime64[us]")
    for k in np.flatnonzero(_quiet_in(names, at, quiet)):
        tz = zone(names[k])
        local = at.astimezone(tz)
        end = local.replace(hour=end_h, minute=end_m, second=0, microsecond=0)
        if end <= local:
            end = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(end_h, end_m), tzinfo=tz)
        ends[k] = np.datetime64(end.astimezone(dt.UTC).replace(tzinfo=None), "us")
    return pd.Series(ends[codes], index=timezones.index)


def _zone_codes(timezones: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Each customer's timezone as a code into the list of distinct names (missing: UTC): a handful of
    zones to work out instead of one per customer."""
    codes, names = pd.factorize(timezones.fillna("UTC").astype(str))
    return codes, [str(n) for n in names]


def _quiet_in(names: list[str], at: dt.datetime, quiet: QuietHours) -> np.ndarray:
    """Per timezone name: does `at` fall in the quiet window there?"""
    start, end = _minutes(quiet.start), _minutes(quiet.end)
    out = np.zeros(len(names), dtype=bool)
    for k, name in enumerate(names):
        local = at.astimezone(zone(name))
        m = local.hour * 60 + local.minute
        out[k] = (start <= m < end) if start < end else (m >= start or m < end)  # a window may span midnight
    return out


def next_quiet_start(timezones: pd.Series, after: pd.Series, quiet: QuietHours) -> pd.Series:
    """The first start of quiet hours after each naive-UTC instant, in each customer's timezone (naive UTC)."""
    start_h, start_m = divmod(_minutes(quiet.start), 60)
    zones = timezones.fillna("UTC").astype(str)
    out = pd.Series(pd.NaT, index=timezones.index, dtype="datetime64[us]")
    for (name, when), idx in pd.DataFrame({"z": zones, "t": after}).groupby(["z", "t"]).groups.items():
        tz = zone(name)
        local = pd.Timestamp(when).to_pydatetime().replace(tzinfo=dt.UTC).astimezone(tz)
        day = local.date() if (local.hour, local.minute) < (start_h, start_m) else local.date() + dt.timedelta(days=1)
        start = dt.datetime.combine(day, dt.time(start_h, start_m), tzinfo=tz)
        out[idx] = pd.Timestamp(start.astimezone(dt.UTC).replace(tzinfo=None))
    return out


def priority_rank(frame: pd.DataFrame) -> np.ndarray:
    """Who goes first for capacity and budget: highest churn score, then customer id (stable)."""
    score = pd.to_numeric(frame["churn_score"], errors="coerce") if "churn_score" in frame else \
        pd.Series(np.nan, index=frame.index)
    ids = frame.index.to_numpy(dtype=str)  # fixed-width text: numpy compares it in C, not object by object
    order = np.lexsort((ids, -score.fillna(-1).to_numpy(dtype=float)))
    rank = np.empty(len(frame), dtype=np.int64)
    rank[order] = np.arange(len(frame))
    return rank


def over_cap(recent: pd.Series | None, ids: pd.Index, plan: Plan) -> np.ndarray:
    """Customers who already had `max` touches within the cap window, across all playbooks."""
    cap = plan.guardrails.frequency_cap
    if cap is None or recent is None:
        return np.zeros(len(ids), dtype=bool)
    return recent.reindex(ids).fillna(0).to_numpy() >= cap.max


def sent_counts(source: Engine | Connection, ids: IdSet | Sequence[str], since: dt.date, until: dt.date,
                exclude: tuple[str, dt.date] | None = None) -> pd.Series:
    """Sent touches per customer with as-of day in [since, until], any playbook; `exclude` = (playbook,
    as-of) leaves one run's own touches out."""
    t = touches.c
    where = [t.status == "sent", t.as_of >= since, t.as_of <= until]
    if exclude is not None:
        where.append(not_(and_(t.playbook == exclude[0], t.as_of == exclude[1])))
    found = lookup(source, ids, t.customer_id,
                   lambda within: select(t.customer_id, func.count()).where(within, *where).group_by(t.customer_id),
                   ["customer_id", "n"])
    return pd.Series(found["n"].to_numpy(dtype="int64"), index=pd.Index(found["customer_id"].to_numpy(dtype=object)),
                     dtype="int64")


def recent_sends(source: Engine | Connection, ids: IdSet | Sequence[str], plan: Plan, as_of: dt.date) -> pd.Series:
    """Sent touches per customer in the cap window up to the as-of day, any playbook (this run excluded)."""
    cap = plan.guardrails.frequency_cap
    if cap is None or not len(ids):
        return pd.Series(dtype="int64")
    return sent_counts(source, ids, as_of - dt.timedelta(days=cap.days - 1), as_of, exclude=(plan.name, as_of))


RIVAL_STATUSES = ("planned", "deferred", "sent")


def same_day_rivals(source: Engine | Connection, ids: IdSet | Sequence[str], plan: Plan, as_of: dt.date) -> pd.DataFrame:
    """Other playbooks' touches for these customers on the same day that are planned, deferred or sent."""
    t = touches.c
    cols = ["customer_id", "touch_key", "status", "priority", "claimed_by"]
    return lookup(source, ids, t.customer_id, lambda within: select(*(t[c] for c in cols)).where(
        within, t.as_of == as_of, t.playbook != plan.name, t.status.in_(RIVAL_STATUSES)), cols)


def outranked(rivals: pd.DataFrame, plan: Plan) -> tuple[set[str], dict[str, list[str]]]:
    """Who this playbook must leave alone today, and which rival touches it may take over.

    Priority decides while a decision is still open: a rival of equal or higher priority keeps its
    customer; a lower-priority rival's touch that is not yet delivered (planned or deferred, and not
    claimed by a running dispatch) can be cancelled. A touch already delivered, or in flight, stands
    and keeps the customer at one touch that day.
    """
    if rivals.empty:
        return set(), {}
    mine = plan.guardrails.priority
    prio = pd.to_numeric(rivals["priority"], errors="coerce").fillna(50)
    keeps = (rivals["status"] == "sent") | (prio >= mine) | rivals["claimed_by"].notna()
    blocked = set(rivals.loc[keeps.to_numpy(), "customer_id"])
    takeable = rivals[~keeps.to_numpy() & ~rivals["customer_id"].isin(blocked).to_numpy()]
    return blocked, takeable.groupby("customer_id")["touch_key"].apply(list).to_dict()

