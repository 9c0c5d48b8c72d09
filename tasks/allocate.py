"""Allocate: give each selected customer the first tier of their segment they are eligible for.

Eligibility here is consent for the tier's channel and purpose, read just before dispatch so a
withdrawal recorded a moment ago already counts. A customer eligible for no tier is dropped with
the reason `no_consent`, recorded in the ledger like every other decision.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import or_, select
from sqlalchemy.engine import Engine

from flows.plan import Plan
from infra.warehouse.schema import consents
from tasks.extract import day_end

CHUNK = 20_000  # customer ids per IN (...) list; keeps statements well under every driver's limits


def consent_effective_at(as_of: dt.date) -> dt.datetime:
    """Consent is judged now (or at the end of a future as-of day): a withdrawal always counts."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    return max(now, day_end(as_of))


def active_consents(engine: Engine, customer_ids: list[str], pairs: set[tuple[str, str]],
                    at: dt.datetime) -> set[tuple[str, str, str]]:
    """(customer_id, channel, purpose) triples with a grant in force at `at`."""
    t = consents.c
    found: set[tuple[str, str, str]] = set()
    channels = sorted({c for c, _ in pairs})
    purposes = sorted({p for _, p in pairs})
    with engine.connect() as conn:
        for start in range(0, len(customer_ids), CHUNK):
            ids = customer_ids[start : start + CHUNK]
            stmt = select(t.customer_id, t.channel, t.purpose).where(
                t.customer_id.in_(ids), t.channel.in_(channels), t.purpose.in_(purposes),
                t.granted_at <= at, or_(t.withdrawn_at.is_(None), t.withdrawn_at > at),
            )
            found.update((r[0], r[1], r[2]) for r in conn.execute(stmt))
    return found


def choose_tiers(selected: pd.DataFrame, plan: Plan, granted: set[tuple[str, str, str]]) -> pd.DataFrame:
    """Columns tier (0-based, -1 when none), channel, template and reason, per selected customer."""
    out = selected.copy()
    out["tier"] = -1
    out["channel"] = pd.Series(pd.NA, index=out.index, dtype="string")
    out["reason"] = pd.Series(pd.NA, index=out.index, dtype="string")
    ids = out.index.to_numpy()
    for seg in plan.segments:
        in_seg = (out["segment"] == seg.name).to_numpy()
        for i, tier in enumerate(seg.tiers):
            open_ = in_seg & (out["tier"].to_numpy() == -1)
            if not open_.any():
                break
            ok = np.fromiter(((cid, tier.consent_channel, tier.purpose) in granted for cid in ids[open_]),
                             dtype=bool, count=int(open_.sum()))
            take = np.flatnonzero(open_)[ok]
            out.iloc[take, out.columns.get_loc("tier")] = i
            out.iloc[take, out.columns.get_loc("channel")] = tier.channel
    out.loc[out["tier"] == -1, "reason"] = "no_consent"
    return out


@task(name="allocate", cache_policy=NO_CACHE)
def allocate(selected: pd.DataFrame, plan: Plan, as_of: dt.date, engine: Engine) -> pd.DataFrame:
    pairs = {(t.consent_channel, t.purpose) for s in plan.segments for t in s.tiers}
    granted = active_consents(engine, list(selected.index), pairs, consent_effective_at(as_of)) if len(selected) else set()
    return choose_tiers(selected, plan, granted)
