"""Measure: what a playbook caused, from the touch ledger and what customers did after the touch.

Design choices, each so that treated and control are compared apples to apples:

- **Arms are intent to treat.** The holdout is drawn (tasks/guardrails.py) before any other guardrail,
  so the control arm is the playbook's `held_out` rows and the treated arm is *every other customer
  the playbook selected*: sent, but also planned, failed, deferred and dropped (no consent, capacity,
  budget, frequency cap, ...). Dropping those would compare the reachable treated customers with a
  control that still holds the unreachable ones, which biases the lift; keeping them measures what
  running the playbook does, diluted by the share it could not reach (the report shows that share).
- **Global control** customers (lifecycle.yaml `control_group`, reason `global_control`) get no
  marketing at all, not just not this playbook, so they are left out of both arms and only counted.
- **One row per customer.** A customer can be selected on many days in the range; their first as-of
  day in the range fixes their arm, segment, tier, variant and touch time. Arms are stable across days
  (the hash ignores the date), and later entries are part of the treatment being measured. Both arms
  come back on the same schedule: every customer a run decides for enters its journey, reached or
  not (tasks/journeys.py), so the re-entry rule, not the outcome of the touch, says when a customer is
  decided again.
- **The touch time** is the run's scheduled send instant on that as-of day (`send_instant`), for both
  arms: the would-be touch of the control and the real one of the treated share one clock (a
  wall-clock delivery time would differ for reruns and backfills, and exists for one arm only).
- **Conversion** is the playbook's goal event (`goal.event`, `order.placed` = an order) in the
  `goal.window_days` after the touch time; **revenue** is the amount of the orders in that window.
- **Lift** is the difference of conversion rates with Newcombe's hybrid score interval, and of
  revenue per customer with a seeded bootstrap (tasks/stats.py). Incremental conversions and revenue
  are those differences times the treated arm's size.
- **Cost** is the per-message fee of each sent touch (lifecycle.yaml `cost_per_message`; follow-ups
  included) plus the coupon's unit cost for each treated customer who was sent an offer and ordered
  in the window (the warehouse records no redemptions, so an order stands for one).
  ROI = (incremental revenue - cost) / cost, shown only when the cost is large enough for a ratio to
  mean something: at least 1% of the incremental revenue (either sign) and at least 10 in the
  currency. Below that (a playbook of free push messages, a few emails) the ratio is the noise of a
  tiny denominator (+90,000 over 0.04 CNY), so the report says why there is none and shows the net.
- **Money** is in the playbook's currency: its budget's, else its offers', else the project's
  (lifecycle.yaml `defaults.currency`, CNY by default), which `cost_per_message` is in too.
- **Runs**: a range holds every as-of day run in it, whatever order they ran in; the report lists them
  with how many customers each decided. A customer held out on one day and treated on another (the
  holdout's percent or salt changed between runs) belongs to neither arm: left out of both and counted.
- **Tiers and variants**: allocation records for each held-out customer the tier they would have had
  (the first tier they consented to whose capacity and budget would have reached them, tasks/allocate.py
  `_would_be_tiers`), so a tier is compared with the control customers of the same would-be tier
  (randomised). Ledgers written before that carry no would-be tier: those tiers are compared with the
  segment's whole control (marked `vs segment control`; read it with care). Variants of one tier are
  randomised among the customers of that tier, so variants against each other are a fair test.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import and_, func, select
from sqlalchemy.engine import Engine

from flows.plan import Plan
from infra.errors import UsageError
from infra.wording import counted
from infra.warehouse import limits
from infra.warehouse.schema import events, orders, touches
from tasks import stats
from tasks.guardrails import send_instant

STEP = "main"
DEFAULT_CURRENCY = "CNY"  # what offers and lifecycle.yaml's defaults.currency default to
ROI_MIN_SHARE = 0.01  # ROI only for a cost of at least 1% of the incremental revenue ...
ROI_MIN_COST = 10.0  # ... and at least 10 in the currency: never a ratio over a near-zero cost
CONFIDENCE = 0.95
N_BOOT = 2000
SUMMARY_DAYS = 28  # a flow run's artifact measures the last four weeks of runs with a finished window
SEGMENT_CONTROL = "vs segment control"
RANDOMISED = "randomised"


# ---- the numbers -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArmStats:
    """One arm of one group: customers, conversions and revenue in the window."""

    n: int
    conversions: int
    rate: float | None
    revenue: float
    revenue_per_customer: float | None


@dataclass(frozen=True)
class Lift:
    """Treated minus control: rate difference (Newcombe) and revenue per customer (bootstrap)."""

    rate_diff: float
    rate_low: float
    rate_high: float
    relative: float | None  # rate_diff / control rate
    revenue_diff: float
    revenue_low: float
    revenue_high: float
    incremental_conversions: float
    incremental_revenue: float

    @property
    def significant(self) -> bool:
        return self.rate_low > 0 or self.rate_high < 0


@dataclass(frozen=True)
class Group:
    """A report line: treated vs control for all customers, a segment, a tier or a variant."""

    by: str  # overall / segment / tier / variant
    segment: str | None
    tier: int | None
    channel: str | None
    variant: str | None
    treated: ArmStats
    control: ArmStats | None
    lift: Lift | None
    comparison: str | None  # randomised / vs segment control / None without a control
    sent: int  # treated customers actually sent a message

    @property
    def label(self) -> str:
        if self.by == "overall":
            return "all"
        text = self.segment or "-"
        if self.tier is not None:
            text += f" / tier {self.tier + 1}" + (f" {self.channel}" if self.channel else "")
        if self.variant:
            text += f" / {self.variant}"
        return text


@dataclass(frozen=True)
class VariantTest:
    """Variant b against variant a of the same tier (both randomised among the tier's customers)."""

    segment: str
    tier: int
    a: str
    b: str
    lift: Lift


@dataclass(frozen=True)
class Costs:
    messages: dict[str, int]  # channel -> sent touches
    message_cost: float
    coupons: int  # treated customers sent an offer who ordered in the window
    coupon_cost: float

    @property
    def total(self) -> float:
        return self.message_cost + self.coupon_cost


@dataclass
class Measurement:
    """Everything `lifecycle report` shows for one playbook and range of as-of days."""

    playbook: str
    version: str
    date_from: str
    date_to: str
    goal_event: str
    window_days: int
    holdout_percent: float
    confidence: float
    currency: str
    overall: Group
    segments: list[Group]
    tiers: list[Group]
    variants: list[Group]
    variant_tests: list[VariantTest]
    costs: Costs
    net: float | None  # incremental revenue - cost
    roi: float | None  # net / cost
    curve: dict[str, list]  # days since touch -> cumulative conversion, treated and control
    global_control: int
    open_windows: int  # customers whose window had not ended when the data ends
    notes: list[str] = field(default_factory=list)
    roi_note: str | None = None  # why there is no ROI although there is a lift: the cost is too small for a ratio
    runs: list[dict[str, Any]] = field(default_factory=list)  # per as-of day: customers decided, by arm (runs_of)
    both_arms: int = 0  # customers held out on one day and treated on another: in neither arm

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able data; groups carry their label; tiers are numbered from 1, as everywhere shown."""
        out = asdict(self)
        for key in ("segments", "tiers", "variants"):
            for row, group in zip(out[key], getattr(self, key)):
                row["label"] = group.label
        for row in [out["overall"], *out["segments"], *out["tiers"], *out["variants"], *out["variant_tests"]]:
            row["tier"] = None if row["tier"] is None else row["tier"] + 1
        out["overall"]["label"] = "all"
        out["costs"]["total"] = self.costs.total
        return out


# ---- reading the ledger and the outcomes -------------------------------------------------------

def touch_instant(plan: Plan, as_of: dt.date) -> dt.datetime:
    """The touch time of a run (naive UTC, as the warehouse stores times)."""
    return send_instant(plan, as_of).astimezone(dt.UTC).replace(tzinfo=None)


def ledger_rows(engine: Engine, playbook: str, date_from: dt.date | None = None,
                date_to: dt.date | None = None) -> pd.DataFrame:
    """The playbook's main-step ledger rows with as-of day in the range (None: open-ended)."""
    t = touches.c
    cond = [t.playbook == playbook, t.step == STEP]
    if date_from:
        cond.append(t.as_of >= date_from)
    if date_to:
        cond.append(t.as_of <= date_to)
    cols = ["customer_id", "as_of", "status", "reason", "segment", "tier", "channel", "variant", "cost"]
    with engine.connect() as conn:
        rows = conn.execute(select(*(t[c] for c in cols)).where(and_(*cond))).all()
    return pd.DataFrame(rows, columns=cols)


BOTH_ARMS = "both_arms"  # held out on one day, treated on another: counted, compared in neither arm


def _arms(rows: pd.DataFrame) -> np.ndarray:
    reason = rows["reason"].astype(object)
    return np.where(reason == "global_control", "global_control",
                    np.where(rows["status"] == "held_out", "control", "treated"))


def assign(rows: pd.DataFrame, plan: Plan) -> pd.DataFrame:
    """One row per customer (their first as-of day): arm, touch time and the offer cost their touch carried.

    A customer in the control arm on one day and the treated arm on another (the holdout was redrawn
    between runs) gets the arm `both_arms`: neither arm can claim what they did afterwards."""
    rows = rows.assign(arm=_arms(rows))
    first = rows.sort_values(["as_of", "customer_id"], kind="stable").drop_duplicates("customer_id")
    first = first.set_index("customer_id")
    arm = first["arm"].to_numpy(dtype=object).copy()
    seen = rows[rows["arm"] != "global_control"].groupby("customer_id")["arm"].nunique()
    arm[first.index.isin(seen.index[seen > 1]) & (arm != "global_control")] = BOTH_ARMS
    days = pd.to_datetime(first["as_of"]).dt.date
    instants = {d: touch_instant(plan, d) for d in days.unique()}
    decided = rows.groupby("customer_id")["as_of"].nunique().reindex(first.index)
    out = first.assign(arm=arm, as_of=days, anchor=pd.to_datetime(days.map(instants)), decided_days=decided)
    out["tier"] = pd.to_numeric(out["tier"], errors="coerce").astype("Int64")
    out["offer_cost"] = _offer_costs(out, plan)
    return out


def _offer_costs(frame: pd.DataFrame, plan: Plan) -> np.ndarray:
    """The ledger's committed cost, else the plan's offer unit cost for the row's tier and variant."""
    units: dict[tuple, float] = {}
    for s in plan.segments:
        for i, t in enumerate(s.tiers):
            for v in [None, *(a.name for a in t.variants)]:
                offer = t.arm(v).offer
                units[(s.name, i, v)] = offer.unit_cost if offer else 0.0
    from_plan = [units.get((s, None if pd.isna(t) else int(t), None if pd.isna(v) else v), 0.0)
                 for s, t, v in zip(frame["segment"], frame["tier"], frame["variant"])]
    ledger = pd.to_numeric(frame["cost"], errors="coerce").to_numpy(dtype=float)
    return np.where(np.isnan(ledger), np.asarray(from_plan, dtype=float), ledger)


def _times(engine: Engine, table, time_col: str, value_col: str | None, customers, start: dt.datetime,
           stop: dt.datetime, where=None) -> pd.DataFrame:
    """(customer_id, at, value) rows of `table` in [start, stop) for the customers a subquery selects."""
    c = table.c
    cols = [c.customer_id, c[time_col]] + ([c[value_col]] if value_col else [])
    stmt = select(*cols).where(c[time_col] >= start, c[time_col] < stop, c.customer_id.in_(customers))
    if where is not None:
        stmt = stmt.where(where)
    frame = pd.DataFrame(_read(engine, stmt), columns=["customer_id", "at", "value"][: len(cols)])
    if "value" not in frame:
        frame["value"] = 0.0
    frame["value"] = pd.to_numeric(frame["value"]).astype(float)
    return frame


def _read(engine: Engine, stmt) -> list:
    with engine.connect() as conn:
        return conn.execute(stmt).all()


def data_end(engine: Engine) -> dt.datetime | None:
    """The latest order in the warehouse: how far outcomes are known."""
    with engine.connect() as conn:
        return conn.execute(select(func.max(orders.c.ordered_at)).where(*limits.good_orders())).scalar_one()


def outcomes(assigned: pd.DataFrame, goal: pd.DataFrame, spend: pd.DataFrame, window_days: int,
             known_until: dt.datetime | None) -> pd.DataFrame:
    """Add converted, days_to_convert, revenue and complete to the assignments (pure).

    `goal` and `spend` are (customer_id, at, value) rows: the goal events and the orders.
    """
    out = assigned.copy()
    window = pd.Timedelta(days=window_days)
    anchor = out["anchor"]

    def in_window(frame: pd.DataFrame) -> pd.DataFrame:
        joined = frame.reset_index(drop=True).merge(
            pd.DataFrame({"customer_id": anchor.index, "anchor": anchor.to_numpy()}), on="customer_id")
        joined["at"] = pd.to_datetime(joined["at"])
        return joined[(joined["at"] >= joined["anchor"]) & (joined["at"] < joined["anchor"] + window)]

    g = in_window(goal)
    first = g.groupby("customer_id")["at"].min()
    delay = (first - anchor.reindex(first.index)).dt.total_seconds() / 86_400
    out["days_to_convert"] = delay.reindex(out.index)
    out["converted"] = out["days_to_convert"].notna()
    s = in_window(spend)
    out["revenue"] = s.groupby("customer_id")["value"].sum().reindex(out.index).fillna(0.0).astype(float)
    out["ordered"] = out.index.isin(s["customer_id"])
    out["complete"] = True if known_until is None else (anchor + window <= pd.Timestamp(known_until))
    return out


def load_outcomes(engine: Engine, plan: Plan, date_from: dt.date | None = None,
                  date_to: dt.date | None = None) -> pd.DataFrame:
    """Assignments and outcomes of the playbook's customers with as-of day in the range."""
    return _load(engine, plan, date_from, date_to)[0]


def _load(engine: Engine, plan: Plan, date_from: dt.date | None,
          date_to: dt.date | None) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Outcomes (one row per customer) and the range's runs (runs_of)."""
    if plan.goal is None:
        raise UsageError(f"{plan.name} has no goal to measure", code="L331",
                         hint="add `goal: {event: order.placed, window_days: 14}` to the playbook")
    rows = ledger_rows(engine, plan.name, date_from, date_to)
    if rows.empty:
        return _empty_outcomes(), []
    assigned = assign(rows, plan)
    window = dt.timedelta(days=plan.goal.window_days)
    start, stop = assigned["anchor"].min().to_pydatetime(), assigned["anchor"].max().to_pydatetime() + window
    t = touches.c
    cond = [t.playbook == plan.name, t.step == STEP]
    cond += [t.as_of >= date_from] if date_from else []
    cond += [t.as_of <= date_to] if date_to else []
    who = select(t.customer_id).where(*cond)  # pushed down: only these customers' rows leave the database
    spend = _times(engine, orders, "ordered_at", "amount", who, start, stop, where=and_(*limits.good_orders()))
    if plan.goal.event == "order.placed":
        goal = spend
    else:
        goal = _times(engine, events, "occurred_at", None, who, start, stop, where=events.c.type == plan.goal.event)
    return outcomes(assigned, goal, spend, plan.goal.window_days, data_end(engine)), runs_of(assigned, rows)


def assignments(engine: Engine, plan: Plan, date_from: dt.date | None = None,
                date_to: dt.date | None = None) -> pd.DataFrame:
    """Who the playbook assigned to which arm, when it touched them and whether the touch carried an offer:
    one row per customer with playbook, customer_id, as_of, arm, status, segment, tier, channel, variant,
    anchor, window_days and has_offer (what the demo's response simulation takes)."""
    rows = ledger_rows(engine, plan.name, date_from, date_to)
    if rows.empty:
        return pd.DataFrame(columns=["playbook", "customer_id", "as_of", "arm", "status", "segment", "tier",
                                     "channel", "variant", "anchor", "window_days", "has_offer"])
    out = assign(rows, plan).reset_index()
    return out.assign(playbook=plan.name, window_days=plan.goal.window_days if plan.goal else 14,
                      has_offer=out["offer_cost"] > 0)


def _empty_outcomes() -> pd.DataFrame:
    cols = ["as_of", "status", "reason", "segment", "tier", "channel", "variant", "cost", "arm", "anchor",
            "decided_days", "offer_cost", "days_to_convert", "converted", "revenue", "ordered", "complete"]
    return pd.DataFrame(columns=cols).rename_axis("customer_id")


def sent_messages(engine: Engine, playbook: str, date_from: dt.date, date_to: dt.date) -> dict[str, int]:
    """Sent touches per channel: the main step in the range, follow-ups up to the window after it."""
    t = touches.c
    stmt = (select(t.channel, func.count()).where(t.playbook == playbook, t.status == "sent",
                                                  t.as_of >= date_from, t.as_of <= date_to)
            .group_by(t.channel))
    with engine.connect() as conn:
        return {str(ch): int(n) for ch, n in conn.execute(stmt) if ch is not None}


# ---- the comparison (pure) ---------------------------------------------------------------------

def arm_stats(frame: pd.DataFrame) -> ArmStats:
    n = len(frame)
    conv = int(frame["converted"].sum())
    revenue = float(frame["revenue"].sum())
    return ArmStats(n, conv, conv / n if n else None, round(revenue, 2), revenue / n if n else None)


def compare(treated: pd.DataFrame, control: pd.DataFrame, *, confidence: float = CONFIDENCE,
            n_boot: int = N_BOOT, seed: int = 0) -> Lift | None:
    """Treated minus control, with intervals; None when either arm is empty."""
    if treated.empty or control.empty:
        return None
    x1, n1, x0, n0 = int(treated["converted"].sum()), len(treated), int(control["converted"].sum()), len(control)
    d, lo, hi = (float(v) for v in stats.rate_difference(x1, n1, x0, n0, confidence))
    r, rlo, rhi = stats.bootstrap_mean_difference(treated["revenue"].to_numpy(), control["revenue"].to_numpy(),
                                                  n_boot=n_boot, confidence=confidence, seed=seed)
    base = x0 / n0
    return Lift(d, lo, hi, d / base if base > 0 else None, r, rlo, rhi, d * n1, r * n1)


def _group(by: str, treated: pd.DataFrame, control: pd.DataFrame | None, comparison: str | None,
           *, segment=None, tier=None, channel=None, variant=None, **kw) -> Group:
    has_control = control is not None and not control.empty
    return Group(by, segment, tier, channel, variant, arm_stats(treated),
                 arm_stats(control) if has_control else None,
                 compare(treated, control, **kw) if has_control else None,
                 comparison if has_control else None, int((treated["status"] == "sent").sum()))


def measure(frame: pd.DataFrame, plan: Plan, *, fees: dict[str, float], sent: dict[str, int],
            date_from: dt.date, date_to: dt.date, confidence: float = CONFIDENCE, n_boot: int = N_BOOT,
            seed: int = 0, currency: str | None = None, runs: list[dict[str, Any]] | None = None) -> Measurement:
    """The whole comparison for one playbook from its outcomes frame (one row per customer); money in
    `currency` (the project's, for a playbook without budget or offers; default CNY); `runs`: runs_of the
    range's ledger (default: from the customers' first days)."""
    kw = {"confidence": confidence, "n_boot": n_boot, "seed": seed}
    treated, control = frame[frame["arm"] == "treated"], frame[frame["arm"] == "control"]
    overall = _group("overall", treated, control, RANDOMISED, **kw)
    segments, tiers, variants, tests = [], [], [], []
    order = [s.name for s in plan.segments]
    seg_names = sorted(set(frame["segment"].dropna()), key=lambda s: (order.index(s) if s in order else 99, s))
    for seg in seg_names:
        t_seg, c_seg = treated[treated["segment"] == seg], control[control["segment"] == seg]
        segments.append(_group("segment", t_seg, c_seg, RANDOMISED, segment=seg, **kw))
        for tier in sorted(int(v) for v in t_seg["tier"].dropna().unique()):
            t_tier = t_seg[t_seg["tier"] == tier]
            c_tier, how = _tier_control(c_seg, tier)
            channel = next(iter(t_tier["channel"].dropna()), None)
            tiers.append(_group("tier", t_tier, c_tier, how, segment=seg, tier=tier, channel=channel, **kw))
            arms = sorted(set(t_tier["variant"].dropna()))
            for v in arms:
                variants.append(_group("variant", t_tier[t_tier["variant"] == v], c_tier, how, segment=seg,
                                       tier=tier, channel=channel, variant=v, **kw))
            for v in arms[1:]:
                lift = compare(t_tier[t_tier["variant"] == v], t_tier[t_tier["variant"] == arms[0]], **kw)
                if lift is not None:
                    tests.append(VariantTest(seg, tier, arms[0], v, lift))
    costs = _costs(treated, fees, sent)
    cur = currency_of(plan, currency)
    net = roi = roi_note = None
    if overall.lift is not None:
        net = overall.lift.incremental_revenue - costs.total
        roi, roi_note = roi_of(overall.lift.incremental_revenue, costs.total, cur)
    both = int((frame["arm"] == BOTH_ARMS).sum())
    notes = _notes(frame, plan, overall, costs, both)
    return Measurement(
        playbook=plan.name, version=plan.version, date_from=date_from.isoformat(), date_to=date_to.isoformat(),
        goal_event=plan.goal.event, window_days=plan.goal.window_days,
        holdout_percent=plan.experiment.holdout_percent if plan.experiment else 0.0, confidence=confidence,
        currency=cur, overall=overall, segments=segments, tiers=tiers, variants=variants,
        variant_tests=tests, costs=costs, net=net, roi=roi, curve=curve(frame, plan.goal.window_days),
        global_control=int((frame["arm"] == "global_control").sum()),
        open_windows=int((~frame["complete"].astype(bool)).sum()), notes=notes, roi_note=roi_note,
        runs=runs if runs is not None else runs_of(frame), both_arms=both)


def roi_of(incremental_revenue: float, cost: float, currency: str) -> tuple[float | None, str | None]:
    """ROI, or None and why: a ratio over a cost under ROI_MIN_COST, or under ROI_MIN_SHARE of the
    incremental revenue, is the noise of its denominator (+90,401 over a few cents), not a return."""
    if cost <= 0:
        return None, "no cost recorded"
    share = ROI_MIN_SHARE * abs(incremental_revenue)
    if cost < ROI_MIN_COST:
        return None, (f"the cost, {money(cost, currency)}, is under {ROI_MIN_COST:,.0f} {currency}: "
                      "too small for a ratio")
    if cost < share:
        return None, (f"the cost, {money(cost, currency)}, is under {ROI_MIN_SHARE:.0%} of the incremental revenue "
                      f"({money(incremental_revenue, currency)}): too small for a ratio")
    return (incremental_revenue - cost) / cost, None


def runs_of(frame: pd.DataFrame, rows: pd.DataFrame | None = None) -> list[dict[str, Any]]:
    """Per as-of day of the ledger `rows` (default: the customers' first days): the customers that run
    decided, in the arm they count in, and how many of them count from an earlier day of the range."""
    if rows is None:
        rows = frame.reset_index()[["customer_id", "as_of"]]
    decided = rows[["customer_id", "as_of"]].assign(as_of=pd.to_datetime(rows["as_of"]).dt.date).drop_duplicates()
    decided = decided.join(frame[["arm", "as_of"]].rename(columns={"as_of": "first"}), on="customer_id")
    out = []
    for day, part in decided.groupby("as_of", sort=True):
        out.append({"as_of": day.isoformat(), "customers": int(len(part)),
                    "treated": int((part["arm"] == "treated").sum()), "held_out": int((part["arm"] == "control").sum()),
                    "counted_earlier": int((part["first"] < day).sum())})
    return out


def _tier_control(c_seg: pd.DataFrame, tier: int) -> tuple[pd.DataFrame, str]:
    """Control rows that record a would-be tier are matched on it; otherwise the segment's whole control."""
    if c_seg["tier"].notna().any():
        return c_seg[c_seg["tier"] == tier], RANDOMISED
    return c_seg, SEGMENT_CONTROL


def _costs(treated: pd.DataFrame, fees: dict[str, float], sent: dict[str, int]) -> Costs:
    message_cost = sum(n * fees.get(ch, 0.0) for ch, n in sent.items())
    redeemed = (treated["status"] == "sent") & treated["ordered"].astype(bool) & (treated["offer_cost"] > 0)
    return Costs(dict(sorted(sent.items())), round(message_cost, 2), int(redeemed.sum()),
                 round(float(treated.loc[redeemed, "offer_cost"].sum()), 2))


def curve(frame: pd.DataFrame, window_days: int) -> dict[str, list]:
    """Share of each arm converted by the end of each day since the touch, day 0 to the window's end."""
    days = list(range(window_days + 1))
    out: dict[str, list] = {"days": days}
    for arm in ("treated", "control"):
        delay = frame.loc[frame["arm"] == arm, "days_to_convert"].to_numpy(dtype=float)
        n = delay.size
        out[arm] = [float(np.sum(delay < d) / n) if n else None for d in days]
    return out


def currency_of(plan: Plan, default: str | None = None) -> str:
    """The currency a playbook's money is shown in: its budget's, else its offers', else `default` (the
    project's, lifecycle.yaml `defaults.currency`), else CNY."""
    if plan.guardrails.budget:
        return plan.guardrails.budget.currency
    tiers = [t for s in plan.segments for t in s.tiers] + [t for f in plan.follow_ups for t in f.tiers]
    offers = (a.offer for t in tiers for a in [t, *t.variants] if a.offer)
    return next((o.currency for o in offers), None) or default or DEFAULT_CURRENCY


def _notes(frame: pd.DataFrame, plan: Plan, overall: Group, costs: Costs, both_arms: int = 0) -> list[str]:
    notes = []
    if both_arms:
        notes.append(f"{counted(both_arms, 'customer')} held out on one as-of day and treated on another (the "
                     "holdout was redrawn: its percent or salt changed between runs) are left out of both arms")
    if overall.lift is not None and not overall.lift.significant:
        notes.append("the lift's interval includes zero: at this size the effect cannot be told apart from none, "
                     "and the incremental revenue and ROI are point estimates")
    if overall.control is None:
        notes.append("no holdout: nothing to compare with, so no lift; add `experiment: {holdout_percent: 10}` "
                     "to the playbook and measure the runs after that")
    elif overall.control.n < 100:
        notes.append(f"only {counted(overall.control.n, 'customer')} in the holdout: intervals are wide")
    open_ = int((~frame["complete"].astype(bool)).sum())
    if open_:
        whose = f"1 customer's {plan.goal.window_days}-day window" if open_ == 1 else \
            f"{open_:,} customers' {plan.goal.window_days}-day windows"
        notes.append(f"{whose} had not ended when the data ends: their conversions so far count (both arms alike)")
    reached = overall.sent / overall.treated.n if overall.treated.n else 0
    if overall.control is not None and reached < 1:
        notes.append(f"{reached:.0%} of the treated arm was sent a message (the rest dropped by guardrails); "
                     "the lift is intent to treat")
    if costs.total == 0:
        notes.append("no cost recorded: set `cost_per_message` per channel in lifecycle.yaml for ROI")
    return notes


# ---- entry points ------------------------------------------------------------------------------

def measure_playbook(engine: Engine, plan: Plan, date_from: dt.date | None = None, date_to: dt.date | None = None,
                     *, fees: dict[str, float], n_boot: int = N_BOOT, seed: int = 0,
                     currency: str | None = None) -> Measurement:
    """Load and measure; by default every as-of day whose window has ended (else every day there is).
    `currency`: the project's (lifecycle.yaml `defaults.currency`), for a playbook without budget or offers."""
    if date_from and date_to and date_from > date_to:
        raise UsageError(f"--from {date_from} is after --to {date_to}", hint="swap the dates", code="L332")
    days = run_days(engine, plan.name)
    if not days:
        raise UsageError(f"no touches recorded for {plan.name} yet", code="L330",
                         hint=f"run it first: lifecycle run {plan.name}")
    lo = date_from or days[0]
    hi = date_to or _last_complete_day(engine, plan, days)
    if date_to is None and hi < lo:  # --from alone, past the last finished window: up to the last run
        hi = max(days[-1], lo)
    frame, runs = _load(engine, plan, lo, hi)
    if frame.empty:
        raise UsageError(f"no touches for {plan.name} with as-of day from {lo} to {hi}", code="L330",
                         hint=f"{plan.name} ran on {len(days)} day(s) from {days[0]} to {days[-1]}")
    sent = sent_messages(engine, plan.name, lo, hi + dt.timedelta(days=plan.goal.window_days))
    return measure(frame, plan, fees=fees, sent=sent, date_from=lo, date_to=hi, n_boot=n_boot, seed=seed,
                   currency=currency, runs=runs)


def run_days(engine: Engine, playbook: str) -> list[dt.date]:
    t = touches.c
    with engine.connect() as conn:
        days = conn.execute(select(t.as_of).where(t.playbook == playbook, t.step == STEP).distinct()).scalars()
        return sorted(pd.Timestamp(d).date() for d in days)


def _last_complete_day(engine: Engine, plan: Plan, days: list[dt.date]) -> dt.date:
    end = data_end(engine)
    if end is None or plan.goal is None:
        return days[-1]
    window = dt.timedelta(days=plan.goal.window_days)
    done = [d for d in days if touch_instant(plan, d) + window <= end]
    return done[-1] if done else days[-1]


def fees_of(config) -> dict[str, float]:
    """Per-message fees by channel from the project config."""
    return {name: ch.cost_per_message for name, ch in config.channels.items()}


def flow_run_summary(engine: Engine, plan: Plan, as_of: dt.date, *, fees: dict[str, float],
                     currency: str | None = None) -> dict[str, Any]:
    """What a flow run can attach as artifacts: the measured effect of this playbook's runs of the
    SUMMARY_DAYS days up to the last one whose window has ended by `as_of` (counts and rates only, no
    customer ids). Returns data, not artifacts: {"markdown": str, "table": [rows], "measurement": dict | None}."""
    key = f"`lifecycle report {plan.name} --format html`"
    if plan.goal is None:
        return {"markdown": f"## Measured effect\n\n{plan.name} has no goal, so nothing to measure.",
                "table": [], "measurement": None}
    last = as_of - dt.timedelta(days=plan.goal.window_days)
    days = [d for d in run_days(engine, plan.name) if last - dt.timedelta(days=SUMMARY_DAYS - 1) <= d <= last]
    if not days:
        return {"markdown": f"## Measured effect\n\nNo earlier run of {plan.name} has a finished "
                            f"{plan.goal.window_days}-day window yet. Later: {key}.", "table": [], "measurement": None}
    m = measure_playbook(engine, plan, days[0], days[-1], fees=fees, n_boot=500, currency=currency)
    return {"markdown": summary_markdown(m) + f"\n\nFull report: {key}.",
            "table": [group_row(g) for g in [m.overall, *m.segments, *m.tiers, *m.variants]],
            "measurement": m.to_json()}


def headline(m: Measurement) -> str:
    """One line: lift with its interval, or why there is none."""
    o = m.overall
    if o.lift is None:
        rate = f"{o.treated.rate:.1%}" if o.treated.rate is not None else "-"
        return f"{counted(o.treated.n, 'customer')}, {rate} converted; no holdout, so no lift"
    pct = int(round(m.confidence * 100))
    rel = f", {o.lift.relative:+.0%} relative" if o.lift.relative is not None else ""
    return (f"{o.treated.n:,} treated vs {o.control.n:,} held out: conversion {o.treated.rate:.1%} vs "
            f"{o.control.rate:.1%}, lift {o.lift.rate_diff * 100:+.1f} pts ({pct}% CI {o.lift.rate_low * 100:+.1f} "
            f"to {o.lift.rate_high * 100:+.1f}{rel})")


def money(value: float | None, currency: str | None) -> str:
    """`116,508 CNY`; under 100 with two decimals (`0.04 CNY`), so a small cost does not read as none."""
    if value is None:
        return "-"
    text = f"{value:,.2f}" if 0 < abs(value) < 100 else f"{value:,.0f}"
    return f"{text} {currency}" if currency else text


def summary_markdown(m: Measurement) -> str:
    """A short markdown summary (Prefect artifact, README-style output)."""
    lines = [f"## Measured effect: {m.playbook}, as-of {m.date_from} to {m.date_to}", "",
             f"- goal: `{m.goal_event}` within {m.window_days} days of the touch", f"- {headline(m)}"]
    if m.overall.lift is not None:
        lift = m.overall.lift
        lines.append(f"- incremental: {counted(round(lift.incremental_conversions), 'conversion')}, "
                     f"{money(lift.incremental_revenue, m.currency)} revenue "
                     f"(CI {money(lift.revenue_low * m.overall.treated.n, m.currency)} to "
                     f"{money(lift.revenue_high * m.overall.treated.n, m.currency)})")
    lines.append(f"- cost: {money(m.costs.total, m.currency)} ({money(m.costs.message_cost, m.currency)} messages, "
                 f"{money(m.costs.coupon_cost, m.currency)} for {counted(m.costs.coupons, 'coupon')})")
    if m.roi is not None or m.roi_note:
        lines.append(f"- {roi_text(m)}")
    lines += [f"- note: {n}" for n in m.notes]
    return "\n".join(lines)


def roi_text(m: Measurement) -> str:
    """`ROI: +27.72 (net 116,508 CNY)`, or why there is none: `ROI: n/a: the cost, 250 CNY, is under 1% ...`."""
    if m.roi is not None:
        return f"ROI: {m.roi:+.2f} (incremental revenue minus cost: {money(m.net, m.currency)})"
    return f"ROI: n/a: {m.roi_note} (incremental revenue minus cost: {money(m.net, m.currency)})"


def group_row(g: Group) -> dict[str, Any]:
    """A flat row for tables (artifact, CLI): counts, rates and the lift."""
    row = {"group": g.label, "by": g.by, "treated": g.treated.n, "sent": g.sent,
           "treated_rate": _r(g.treated.rate), "control": g.control.n if g.control else None,
           "control_rate": _r(g.control.rate) if g.control else None}
    if g.lift:
        row.update(lift_pts=_r(g.lift.rate_diff * 100, 2), low_pts=_r(g.lift.rate_low * 100, 2),
                   high_pts=_r(g.lift.rate_high * 100, 2), revenue_lift=_r(g.lift.revenue_diff, 2),
                   comparison=g.comparison)
    return row


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


@task(name="measure", cache_policy=NO_CACHE)
def measure_task(engine: Engine, plan: Plan, as_of: dt.date, fees: dict[str, float],
                 currency: str | None = None) -> dict[str, Any]:
    return flow_run_summary(engine, plan, as_of, fees=fees, currency=currency)
