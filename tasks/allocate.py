"""Allocate: give each selected customer the first tier of their segment they are eligible for.

First the playbook-wide guardrails: the global control group of lifecycle.yaml (`global_control`, marketing
playbooks only), the holdout (`holdout`), the suppression list for every channel
(`suppressed`: complaints, hard bounces, manual blocks), the frequency cap across playbooks
(`frequency_cap`) and quiet hours in the customer's timezone (`quiet_hours`: dropped, or kept and
deferred). Then, tier by tier in order, a customer is eligible when they consented to the tier's
channel and purpose (read just before dispatch, so a withdrawal a moment ago counts) and is not
suppressed on that channel, the tier's
daily capacity is not used up and the playbook's budget still covers the offer; otherwise they fall
through to the next tier. Capacity and budget go to the highest churn score first. A customer
eligible for no tier is dropped with the reason that stopped them last (`no_consent`, `suppressed`,
`capacity`, `budget`), recorded in the ledger like every other decision. `skipped` says, tier by
tier, why the tiers before the chosen one passed a customer by ("0:capacity 1:no_consent"), and
`due_at` when a deferred customer's quiet hours end (naive UTC).

A consent some tier needs that no customer of its segments holds (a team that imported its customers but
no consents) drops them all as `no_consent`: allocate_frame says so, once per consent, in the frame's
`attrs["consent_gaps"]` (for `lifecycle plan` and the run summary), and the task logs it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import or_, select
from sqlalchemy.engine import Connection, Engine

from flows.plan import Plan
from infra.settings import ControlGroup
from tasks import guardrails
from infra.warehouse.bulk import IdSet, lookup, utcnow
from infra.warehouse.schema import consents, suppressions
from tasks.extract import day_end
from tasks.common import IO_RETRIES



def consent_effective_at(as_of: dt.date) -> dt.datetime:
    """Consent is judged now (or at the end of a future as-of day): a withdrawal always counts."""
    return max(utcnow(), day_end(as_of))


class Holders:
    """Who holds what, for whole batches: consents by (channel, purpose), suppressions by (channel,), where
    (None,) means every channel. `(customer_id, *key) in holders` answers for one customer."""

    def __init__(self, by_key: dict[tuple, pd.Index] | None = None) -> None:
        self.by_key = by_key or {}

    @classmethod
    def of(cls, rows: Holders | set[tuple] | None) -> Holders:
        """From (customer_id, *key) tuples (tests, one customer), or as they are."""
        if isinstance(rows, Holders):
            return rows
        grouped: dict[tuple, list] = {}
        for cid, *rest in rows or ():
            grouped.setdefault(tuple(rest), []).append(cid)
        return cls({k: pd.Index(v) for k, v in grouped.items()})

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, keys: list[str]) -> Holders:
        """From a frame of customer_id and the key columns (missing values as None)."""
        groups = frame.groupby(keys, dropna=False, sort=False).indices if len(frame) else {}
        ids = frame["customer_id"].to_numpy(dtype=object)
        return cls({tuple(None if pd.isna(v) else v for v in (k if isinstance(k, tuple) else (k,))): pd.Index(ids[rows])
                    for k, rows in groups.items()})

    def member(self, ids: np.ndarray, key: tuple) -> np.ndarray:
        """Which of `ids` hold `key` (one hash lookup per customer, not a Python loop)."""
        held = self.by_key.get(key)
        if held is None or not len(held):
            return np.zeros(len(ids), dtype=bool)
        return pd.Index(ids).isin(held)

    def __contains__(self, item: tuple) -> bool:
        held = self.by_key.get(tuple(item[1:]))
        return held is not None and item[0] in held

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_key.values())


def active_consents(source: Engine | Connection, customer_ids: IdSet | Sequence[str], pairs: set[tuple[str, str]],
                    at: dt.datetime) -> Holders:
    """Who has a grant in force at `at`, by (channel, purpose)."""
    t = consents.c
    channels = sorted({c for c, _ in pairs})
    purposes = sorted({p for _, p in pairs})
    found = lookup(source, customer_ids, t.customer_id, lambda within: select(t.customer_id, t.channel, t.purpose).where(
        within, t.channel.in_(channels), t.purpose.in_(purposes),
        t.granted_at <= at, or_(t.withdrawn_at.is_(None), t.withdrawn_at > at)), ["customer_id", "channel", "purpose"])
    return Holders.from_frame(found, ["channel", "purpose"])


def suppressed_for(source: Engine | Connection, customer_ids: IdSet | Sequence[str]) -> Holders:
    """Who is on the suppression list, by consent channel; (None,) means every channel."""
    t = suppressions.c
    found = lookup(source, customer_ids, t.customer_id, lambda within: select(t.customer_id, t.channel).where(within),
                   ["customer_id", "channel"])
    return Holders.from_frame(found, ["channel"])


def consent_gaps(conn: Connection, selected: pd.DataFrame, plan: Plan, granted: Holders) -> list[dict]:
    """The consents (channel, purpose) tiers need that no customer in those tiers' segments holds, one entry
    each: channel, purpose, the tiers' channels, the customers they drop, whether the warehouse has any such
    consent at all, and the message saying so."""
    if selected.empty or "segment" not in selected:
        return []
    needs: dict[tuple[str, str], tuple[set[str], set[str]]] = {}  # consent -> (delivery channels, segments)
    for seg in plan.segments:
        for t in seg.tiers:
            channels, segments = needs.setdefault((t.consent_channel, t.purpose), (set(), set()))
            channels.add(t.channel)
            segments.add(seg.name)
    ids = selected.index.to_numpy(dtype=object)
    segment = selected["segment"].to_numpy(dtype=object)
    gaps = []
    for (channel, purpose), (tiers, segments) in sorted(needs.items()):
        who = ids[np.isin(segment, sorted(segments))]
        if not len(who) or granted.member(who, (channel, purpose)).any():
            continue
        c = consents.c
        anywhere = conn.execute(select(c.consent_id).where(c.channel == channel, c.purpose == purpose).limit(1)).first()
        named = " and ".join(sorted(tiers))
        what = (f"no customer in the audience has a {purpose} consent for {channel}" if anywhere is not None else
                f"the warehouse has no {purpose} consent for {channel} at all")
        gaps.append({"channel": channel, "purpose": purpose, "tiers": sorted(tiers), "customers": int(len(who)),
                     "anywhere": anywhere is not None,
                     "message": f"{what}: every {named} tier skips its {len(who):,} customer{'s' if len(who) != 1 else ''} "
                                "as no_consent; import consents with `lifecycle data import consents FILE`"})
    return gaps


def choose_tiers(selected: pd.DataFrame, plan: Plan, granted: Holders | set[tuple[str, str, str]], *,
                 recent: pd.Series | None = None, send_at: dt.datetime | None = None,
                 suppressed: Holders | set[tuple[str, str | None]] | None = None,
                 outranked_by: set[str] | None = None, control: ControlGroup | None = None) -> pd.DataFrame:
    """Columns tier (0-based, -1 when none), channel, variant, cost, deferred and reason, per customer."""
    out = selected.copy(deep=False)  # copy-on-write: the caller's frame stays as it was
    n = len(out)
    ids = out.index.to_numpy(dtype=object)
    tier = np.full(n, -1)
    channel = np.full(n, None, dtype=object)
    variant = np.full(n, None, dtype=object)
    cost = np.zeros(n)
    reason = np.full(n, "no_consent", dtype=object)  # why a customer got no tier, if none
    skipped = np.full(n, "", dtype=object)  # "0:capacity 1:no_consent": why each earlier tier passed them by
    active = np.ones(n, dtype=bool)
    holders, blocked_on = Holders.of(granted), Holders.of(suppressed)
    blocked_all = blocked_on.member(ids, (None,))
    rival = pd.Index(ids).isin(list(outranked_by or ()))
    for why, mask in (("global_control", guardrails.in_control_group(ids, plan, control)),
                      ("holdout", guardrails.held_out(ids, plan)), ("suppressed", blocked_all),
                      ("priority", rival), ("frequency_cap", guardrails.over_cap(recent, out.index, plan))):
        reason[active & mask] = why
        active &= ~mask
    quiet = plan.guardrails.quiet_hours
    deferred = np.zeros(n, dtype=bool)
    due_at = pd.Series(pd.NaT, index=out.index, dtype="datetime64[us]")
    if quiet is not None and send_at is not None and n:
        zones = out.get("timezone", pd.Series("UTC", index=out.index))
        mask = guardrails.in_quiet_hours(zones, send_at, quiet)
        if quiet.action == "drop":
            reason[active & mask] = "quiet_hours"
            active &= ~mask
        else:
            deferred = mask
            due_at = guardrails.quiet_ends(zones, send_at, quiet)
    budget = plan.guardrails.budget.amount if plan.guardrails.budget else np.inf
    rank = guardrails.priority_rank(out)
    segments = out["segment"].to_numpy()
    cutoff: dict[tuple[str, int], float] = {}  # the last rank a tier took when capacity or budget ran out
    for seg in plan.segments:
        in_seg = active & (segments == seg.name)
        for i, t in enumerate(seg.tiers):
            open_ = np.flatnonzero(in_seg & (tier == -1))
            if not len(open_):
                break
            ok = holders.member(ids[open_], (t.consent_channel, t.purpose))
            blocked = blocked_on.member(ids[open_], (t.consent_channel,))
            why = np.full(n, None, dtype=object)  # why this tier passed each customer by, for the trace
            why[open_] = "no_consent"
            why[open_[ok & blocked]] = "suppressed"
            reason[open_[ok & blocked]] = "suppressed"
            ok &= ~blocked
            cand = open_[ok]
            cand = cand[np.argsort(rank[cand], kind="stable")]
            wanted = len(cand)
            if t.capacity is not None and len(cand) > t.capacity:
                reason[cand[t.capacity:]] = why[cand[t.capacity:]] = "capacity"
                cand = cand[: t.capacity]
            arms = guardrails.pick_variants(ids[cand], plan, f"{seg.name}/{i}", t.variants)
            unit = {a: (t.arm(a).offer.unit_cost if t.arm(a).offer else 0.0) for a in set(arms)}
            costs = np.array([unit[a] for a in arms], dtype=float)
            # in rank order, until the budget runs out, for every arm alike: a free arm does not go on
            # past that point, so the A/B arms of a tier stay balanced (a fair comparison)
            fits = np.cumsum(costs) <= budget
            reason[cand[~fits]] = why[cand[~fits]] = "budget"
            take = cand[fits]
            budget -= costs[fits].sum()
            tier[take], channel[take], variant[take], cost[take] = i, t.channel, arms[fits], costs[fits]
            cutoff[(seg.name, i)] = float(rank[take].max()) if len(take) < wanted and len(take) else \
                (-1.0 if len(take) < wanted else np.inf)
            passed = np.setdiff1d(open_, take, assume_unique=True)
            skipped[passed] = skipped[passed] + f"{i}:" + why[passed] + " "
    would = _would_be_tiers(out, plan, holders, blocked_on, reason == "holdout", rank, cutoff)
    out["tier"] = tier
    out["channel"] = pd.Series(channel, index=out.index, dtype="string")
    out["variant"] = pd.Series(variant, index=out.index, dtype="string")
    out["cost"] = cost
    out["deferred"] = deferred & (tier >= 0)
    out["due_at"] = due_at.where(out["deferred"])  # naive UTC: when quiet hours end for the customer
    out["skipped"] = pd.Series(skipped, index=out.index, dtype=object).str.strip().replace("", None)
    out["reason"] = pd.Series(np.where(tier >= 0, None, reason), index=out.index, dtype="string")
    out.loc[out["deferred"], "reason"] = "quiet_hours"
    return out.join(would)


def _would_be_tiers(out: pd.DataFrame, plan: Plan, holders: Holders, blocked_on: Holders, held: np.ndarray,
                    rank: np.ndarray, cutoff: dict[tuple[str, int], float]) -> pd.DataFrame:
    """The tier, channel and variant each held-out customer would have got: the first tier they consented
    to whose capacity and budget would have reached them (their churn-score rank within the rank the
    treated customers reached there). The control group then matches each tier like for like."""
    n = len(out)
    ids = out.index.to_numpy(dtype=object)
    tier = np.full(n, -1)
    channel = np.full(n, None, dtype=object)
    variant = np.full(n, None, dtype=object)
    segments = out["segment"].to_numpy()
    for seg in plan.segments:
        for i, t in enumerate(seg.tiers):
            open_ = np.flatnonzero(held & (segments == seg.name) & (tier == -1))
            if not len(open_):
                break
            ok = (holders.member(ids[open_], (t.consent_channel, t.purpose))
                  & ~blocked_on.member(ids[open_], (t.consent_channel,)))
            take = open_[ok & (rank[open_] <= cutoff.get((seg.name, i), np.inf))]
            tier[take], channel[take] = i, t.channel
            variant[take] = guardrails.pick_variants(ids[take], plan, f"{seg.name}/{i}", t.variants)
    return pd.DataFrame({"would_tier": tier, "would_channel": channel, "would_variant": variant}, index=out.index)


def allocate_frame(selected: pd.DataFrame, plan: Plan, as_of: dt.date, engine: Engine, *,
                   control: ControlGroup | None = None) -> pd.DataFrame:
    """Read consents and recent sends for the selected customers, then choose their tiers."""
    ids = IdSet(selected.index.to_numpy(dtype=object))
    pairs = {(t.consent_channel, t.purpose) for s in plan.segments for t in s.tiers}
    with engine.connect() as conn:  # one connection: on PostgreSQL the ids are loaded once for all four
        granted = active_consents(conn, ids, pairs, consent_effective_at(as_of)) if len(ids) else Holders()
        recent = guardrails.recent_sends(conn, ids, plan, as_of)
        blocked = suppressed_for(conn, ids) if len(ids) else Holders()
        rivals = guardrails.same_day_rivals(conn, ids, plan, as_of) if len(ids) else None
        gaps = consent_gaps(conn, selected, plan, granted)
    keep_off, take_over = guardrails.outranked(rivals, plan) if rivals is not None else (set(), {})
    out = choose_tiers(selected, plan, granted, recent=recent, send_at=guardrails.send_instant(plan, as_of, utcnow().replace(tzinfo=dt.UTC)),
                       suppressed=blocked, outranked_by=keep_off, control=control)
    # lower-priority touches of other playbooks that dispatch cancels before sending ours
    out["takes_over"] = pd.Series(take_over, dtype=object).reindex(out.index) if take_over else \
        pd.Series(None, index=out.index, dtype=object)
    out.attrs["consent_gaps"] = gaps
    return out


@task(name="allocate", cache_policy=NO_CACHE, **IO_RETRIES)
def allocate(selected: pd.DataFrame, plan: Plan, as_of: dt.date, engine: Engine, *,
             control: ControlGroup | None = None) -> pd.DataFrame:
    out = allocate_frame(selected, plan, as_of, engine, control=control)
    if out.attrs.get("consent_gaps"):
        from prefect import get_run_logger

        for gap in out.attrs["consent_gaps"]:
            get_run_logger().warning(gap["message"])
    return out
