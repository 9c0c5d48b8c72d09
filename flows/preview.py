"""`lifecycle plan`: what a playbook would do today, against the real warehouse, sending and writing nothing.

It calls the flow's plain step functions directly (no Prefect run, no ledger rows, no outbox), so the
preview and the real run decide with the same code: extract -> features -> entry (audience, re-entry)
-> score -> segment -> allocate (guardrails included) -> render.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
from sqlalchemy.engine import Engine

from flows.plan import Plan
from infra.redact import mask_id, mask_person, strip_controls
from infra.warehouse import limits
from infra.wording import clipped
from tasks.allocate import allocate_frame
from tasks.dispatch import ledger_status, render_messages, touch_keys
from tasks.extract import extract_all
from tasks.features import build_features
from infra.warehouse.bulk import utcnow
from tasks.guardrails import send_instant
from tasks.score import add_reasons, score_frame
from tasks.uplift import add_uplift, for_plan
from tasks.segment import assign_segments, entrants

SAMPLES = 3  # rendered messages per tier


mask = mask_id  # an identifier a reviewer can tell apart but not use: C00012342 -> C00****42


def preview(plan: Plan, engine: Engine, as_of: dt.date, model: Any = None, *, control: Any = None,
            default_timezone: str | None = None) -> dict[str, Any]:
    """Counts per segment and tier, costs, drops by reason and masked sample messages, as plain data; and
    what would surprise: a consent no customer of a tier's segments holds (`consent_gaps`), customers whose
    quiet hours are judged in UTC for want of a timezone (`timezones`).

    `control` is the project's global control group (lifecycle.yaml), held out as the real run would;
    `default_timezone` its `defaults.timezone`.
    """
    feats = build_features(extract_all(engine, as_of))
    entering, entry = entrants(engine, feats, plan, as_of)  # the audience and the re-entry rule, as a run
    scored = score_frame(feats[entering], model)
    uplift_model = for_plan(engine, plan)
    if uplift_model is not None:
        scored = add_uplift(scored, uplift_model)
    selected, counts = assign_segments(scored, plan, as_of)
    counts.update(entry)
    allocated = allocate_frame(selected, plan, as_of, engine, control=control)
    allocated["touch_key"] = touch_keys(plan, allocated.index, as_of)
    allocated["status"] = ledger_status(allocated)
    planned = allocated[allocated["status"].isin(["planned", "deferred"])]
    tiers = []
    for seg in plan.segments:
        for i, tier in enumerate(seg.tiers):
            rows = planned[(planned["segment"] == seg.name) & (planned["tier"] == i)]
            offer = tier.offer
            tiers.append({
                "segment": seg.name, "tier": i, "channel": tier.channel, "capacity": tier.capacity,
                "offer": f"{offer.coupon_pool} @ {offer.unit_cost:g} {offer.currency}" if offer else None,
                "variants": {str(k): int(v) for k, v in rows["variant"].value_counts().items()},
                "customers": int(len(rows)), "deferred": int((rows["status"] == "deferred").sum()),
                "cost": round(float(rows["cost"].sum()), 2),
            })
    not_sent = allocated[allocated["status"].isin(["dropped", "held_out"])]
    budget = plan.guardrails.budget
    return {
        "playbook": plan.name, "version": plan.version, "plan_hash": plan.plan_hash, "as_of": as_of.isoformat(),
        "model_version": getattr(model, "version", None), "send_at": send_instant(plan, as_of, utcnow().replace(tzinfo=dt.UTC)).isoformat(),
        **counts,
        "tiers": tiers,
        "dropped": {str(k): int(v) for k, v in not_sent["reason"].value_counts().items()},
        "deferred": int((allocated["status"] == "deferred").sum()),
        "cost": round(float(planned["cost"].sum()), 2),
        "currency": budget.currency if budget else next(
            (t.offer.currency for s in plan.segments for t in s.tiers if t.offer), None),
        "budget": budget.amount if budget else None,
        "samples": _samples(planned, plan, model),
        "consent_gaps": allocated.attrs.get("consent_gaps", []),
        "timezones": _timezones(feats.loc[entering, "timezone"] if "timezone" in feats else None, default_timezone),
    }


def _timezones(zones: pd.Series | None, default: str | None) -> dict[str, Any]:
    """The audience's customers judged in UTC: with no timezone zoneinfo knows (empty or unknown names, as
    runs read them), and, when defaults.timezone names another zone, stored as UTC (what imports gave
    customers without a timezone before it was set)."""
    if zones is None or zones.empty:
        return {"unusable": 0, "utc": 0, "default": default}
    usable = limits.zone_mask(zones.astype(object).where(zones.notna(), None))
    utc = int((zones.astype(object) == "UTC").sum()) if default and default != "UTC" else 0
    return {"unusable": int((~usable).sum()), "utc": utc, "default": default}


def warnings_of(r: dict[str, Any]) -> list[str]:
    """What the preview found that would surprise an author, a line each: consents nobody in a tier's
    segments holds, customers whose quiet hours are judged in UTC."""
    lines = [gap["message"] for gap in r.get("consent_gaps", [])]
    zones = r.get("timezones") or {}
    if zones.get("unusable"):
        n = zones["unusable"]
        lines.append(f"{n:,} customer{'s' if n != 1 else ''} in the audience {'have' if n != 1 else 'has'} no timezone "
                     "zoneinfo knows (empty or unknown): quiet hours and send times are judged in UTC for them; give "
                     "them theirs with `lifecycle data import customers FILE` (a timezone column, or "
                     "--default-timezone ZONE)")
    if zones.get("utc"):
        n, zone = zones["utc"], zones["default"]
        lines.append(f"{n:,} customer{'s' if n != 1 else ''} in the audience {'are' if n != 1 else 'is'} in UTC while "
                     f"defaults.timezone is {zone}: customers imported without a timezone before it was set were "
                     f"stored as UTC; if they live in {zone}, `lifecycle data import customers FILE "
                     f"--default-timezone {zone}` corrects them (an import updates customers)")
    return lines


def _samples(planned: pd.DataFrame, plan: Plan, model: Any) -> list[dict[str, Any]]:
    """A few rendered messages per tier, with customer ids and names masked."""
    picked = planned.sort_index().groupby(["segment", "tier"], sort=False).head(SAMPLES)
    if picked.empty:
        return []
    picked = add_reasons(picked, model)
    rendered = render_messages(picked, plan)
    names = picked["first_name"] if "first_name" in picked else pd.Series(None, index=picked.index)
    out = []
    for rec in rendered.to_dict("records"):
        cid, name = str(rec["customer_id"]), names.get(rec["customer_id"])
        out.append({"segment": rec["segment"], "tier": int(rec["tier"]), "variant": rec["variant"],
                    "customer": mask(cid), "subject": mask_person(rec["subject"], cid, name),
                    "body": mask_person(rec["body"], cid, name)})
    return out


def format_preview(r: dict[str, Any]) -> str:
    """The preview as a table a person reads in the terminal."""
    cur = r["currency"] or ""
    lines = [
        f"{r['playbook']} v{r['version']} as of {r['as_of']}  (plan: nothing sent, nothing written)",
        f"  plan {r['plan_hash']}, model {r['model_version'] or 'none'}, sends at {r['send_at']}",
        f"  {r['customers']:,} customers, {r['audience']:,} in the audience, {r['unmatched']:,} in no segment",
    ]
    width = max([len(t["segment"]) for t in r["tiers"]] + [7])
    ow = max([len(t["offer"] or "-") for t in r["tiers"]] + [5])
    lines.append(f"  {'segment':<{width}}  tier  {'channel':<8} {'offer':<{ow}} {'customers':>9}  {'cost':>10}  variants")
    for t in r["tiers"]:
        cap = f" capacity {t['capacity']:,}" if t["capacity"] else ""
        variants = ", ".join(f"{k} {v:,}" for k, v in sorted(t["variants"].items())) or "-"
        deferred = f" ({t['deferred']:,} deferred)" if t["deferred"] else ""
        lines.append(f"  {t['segment']:<{width}}  {t['tier'] + 1:>4}  {t['channel']:<8} {(t['offer'] or '-'):<{ow}} "
                     f"{t['customers']:>9,}  {t['cost']:>10,.2f}  {variants}{cap}{deferred}".rstrip())
    budget = f" of a {r['budget']:,.2f} {cur} budget" if r["budget"] else ""
    lines.append(f"  projected cost: {r['cost']:,.2f} {cur}{budget}".rstrip())
    dropped = ", ".join(f"{k} {v:,}" for k, v in sorted(r["dropped"].items())) or "none"
    lines.append(f"  not touched: {dropped}" + (f"; deferred for quiet hours: {r['deferred']:,}" if r["deferred"] else ""))
    lines += [f"  warning: {w}" for w in warnings_of(r)]
    if r["samples"]:
        lines.append("  samples (customer ids and names masked):")
    for s in r["samples"]:
        arm = f" [{s['variant']}]" if s["variant"] else ""
        subject = f"[{s['subject']}] " if s["subject"] else ""
        body = " ".join(s["body"].split())
        lines.append(f"    {s['segment']}/tier {s['tier'] + 1}{arm} {s['customer']}: {subject}{clipped(body, 150)}")
    return strip_controls("\n".join(lines))  # a name or template text cannot act on the terminal
