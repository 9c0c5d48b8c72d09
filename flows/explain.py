"""`lifecycle explain CUSTOMER_ID`: why one customer got (or did not get) a message, decision by decision.

For each playbook that decided about the customer (its latest as-of day, or the --as-of day), the trace
recomputes that day's features for this customer alone (their own rows, read by index, never the whole
warehouse) with the pipeline's own feature code, scores them with the model version the ledger names,
evaluates the audience and segment rules as the segment step does, and reads the rest from the touch
ledger: the tier chosen and why the tiers before it passed the customer by (`skipped`), holdout, control
group and variant, status, reason, channel and due time; then the conversions in the playbook's goal
window after the touch. For an operator: it shows the customer id, never an email, phone or message.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import json
import zoneinfo
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import and_, func, select
from sqlalchemy.engine import Engine

from flows.plan import Plan, TierPlan
from infra.errors import AuthorError, LifecycleError, UsageError
from infra.settings import ProjectConfig
from infra.warehouse import limits
from infra.wording import counted
from infra.warehouse.schema import customers, events, orders, touches

HIDDEN = {"first_name", "advisor_id"}  # carried for messages, not shown
LEDGER_COLUMNS = ["touch_key", "run_id", "playbook", "playbook_version", "plan_hash", "step", "as_of", "segment",
                  "tier", "channel", "template", "variant", "score", "model_version", "status", "reason",
                  "skipped", "due_at", "cost", "created_at", "updated_at"]
SKIPPED = {
    "no_consent": "no {purpose} consent for {consent}",
    "suppressed": "on the suppression list for {consent}",
    "capacity": "the tier's capacity ({capacity} a day) went to higher churn scores first",
    "budget": "the playbook's budget{budget} was used up",
}
DROPPED = {
    "holdout": "in this playbook's holdout (its control group): recorded, never sent, to measure the lift",
    "global_control": "in the global control group: no marketing from any playbook",
    "frequency_cap": "already had {cap} (frequency cap, counted across playbooks)",
    "quiet_hours": "it was quiet hours ({quiet}, their time) and the playbook drops rather than defers",
    "priority": "another playbook of equal or higher priority had them that day",
    "suppressed": "on the suppression list (every channel)",
    "no_consent": "eligible for no tier: the last one needed consent they have not given",
    "capacity": "eligible for no tier: the last one's capacity was used up",
    "budget": "eligible for no tier: the budget was used up",
    "expired": "deferred by quiet hours, then its send window passed before it could go out",
}


def add_arguments(sub, common: argparse.ArgumentParser, date_type) -> None:
    p = sub.add_parser("explain", parents=[common], help="the decision trace for one customer: features, score, "
                       "segment, tier, holdout, ledger and conversions")
    p.add_argument("customer_id", metavar="CUSTOMER_ID")
    p.add_argument("--playbook", metavar="NAME", help="only this playbook (a name or a path); default: every "
                   "playbook that decided about the customer")
    p.add_argument("--as-of", type=date_type, help="that day's decisions (default: each playbook's latest)")
    p.add_argument("--format", choices=["text", "json"], default="text")


def explain_cmd(args: argparse.Namespace) -> int:
    from flows.commands import _context
    from infra.warehouse.db import require_customers

    config, _, engine = _context(args)
    require_customers(engine)
    report = explain(engine, config, args.customer_id, playbook=args.playbook, as_of=args.as_of)
    print(json.dumps(report, indent=1, default=str) if args.format == "json" else format_text(report))
    return 0


# ---- finding things ----------------------------------------------------------------------------

def require_customer(engine: Engine, customer_id: str) -> None:
    """The customer exists (in customers or orders), else L340 with the nearest ids around it."""
    c = customers.c
    with engine.connect() as conn:
        if conn.execute(select(c.customer_id).where(c.customer_id == customer_id)).first():
            return
        if conn.execute(select(orders.c.customer_id).where(orders.c.customer_id == customer_id).limit(1)).first():
            return
        # cheap near matches: the ids sorted next to it (a primary-key range), and its upper-case form
        probes = {customer_id, customer_id.strip().upper(), customer_id.strip()}
        near: list[str] = []
        for probe in probes:
            after = select(c.customer_id).where(c.customer_id >= probe).order_by(c.customer_id).limit(5)
            before = select(c.customer_id).where(c.customer_id < probe).order_by(c.customer_id.desc()).limit(5)
            near += conn.execute(after).scalars().all() + conn.execute(before).scalars().all()
    close = difflib.get_close_matches(customer_id.strip().upper(), sorted(set(near)), n=1, cutoff=0.6) or \
        difflib.get_close_matches(customer_id, sorted(set(near)), n=1, cutoff=0.6)
    raise UsageError(f"no customer '{customer_id}' in the warehouse",
                     hint=f"did you mean '{close[0]}'?" if close else "customer ids are as in the warehouse's "
                     "customers table (the touch ledger and outbox files name them too)", code="L340")


def ledger_rows(engine: Engine, customer_id: str, playbook: str | None, as_of: dt.date | None) -> pd.DataFrame:
    """The customer's ledger rows (by the customer index), newest day first."""
    t = touches.c
    cond = [t.customer_id == customer_id]
    cond += [t.playbook == playbook] if playbook else []
    cond += [t.as_of == as_of] if as_of else []
    with engine.connect() as conn:
        rows = conn.execute(select(*(t[c] for c in LEDGER_COLUMNS)).where(and_(*cond))
                            .order_by(t.as_of.desc(), t.created_at.desc())).all()
    frame = pd.DataFrame(rows, columns=LEDGER_COLUMNS)
    frame["as_of"] = pd.to_datetime(frame["as_of"]).dt.date
    return frame.astype(object).where(frame.notna(), None)


def customer_features(engine: Engine, customer_id: str, as_of: dt.date) -> pd.DataFrame:
    from tasks.lookup import customer_features as lookup

    return lookup(engine, customer_id, as_of)


# ---- one decision ------------------------------------------------------------------------------

def _plan_for(name: str, config: ProjectConfig) -> tuple[Plan | None, str | None]:
    from flows.commands import resolve_playbook
    from flows.compiler import compile_file

    try:
        return compile_file(resolve_playbook(name), config), None
    except (UsageError, AuthorError) as exc:
        return None, f"playbook {name} cannot be loaded now ({exc.message}): rules and tiers are not shown"


def _model(engine: Engine, plan: Plan | None, version: str | None):
    from models import registry

    name = plan.model if plan is not None else "churn"
    if plan is not None and not plan.model:
        return None, None
    if version:
        model = registry.by_version(engine, version, name)
        if model is not None:
            return model, None
        latest = registry.latest(engine, name)
        return latest, (f"model {version} (named by the ledger) is no longer registered; scored with "
                        f"{latest.version if latest else 'no model'} instead")
    return registry.latest(engine, name), None


def _score(features: pd.DataFrame, model) -> dict[str, Any]:
    from tasks.score import add_reasons, score_frame

    if model is None or features.empty:
        return {"model_version": getattr(model, "version", None), "churn_score": None, "reasons": []}
    try:
        scored = add_reasons(score_frame(features, model).assign(tier=0), model)
    except LifecycleError as exc:
        return {"model_version": model.version, "churn_score": None, "reasons": [], "error": exc.message}
    row = scored.iloc[0]
    text = row["churn_reasons"]
    return {"model_version": model.version,
            "churn_score": None if pd.isna(row["churn_score"]) else float(row["churn_score"]),
            "reasons": [r for r in str(text).split("; ") if r] if not pd.isna(text) else []}


def _rules(plan: Plan, frame: pd.DataFrame, as_of: dt.date) -> tuple[dict, list[dict], str | None]:
    """Audience and segments evaluated on this one row, exactly as tasks/segment.py does (first match wins)."""
    from flows.expr import evaluate

    def holds(rule) -> bool | None:
        if frame.empty:
            return None
        return True if rule is None else bool(evaluate(rule, frame, as_of=as_of).iloc[0])

    audience = {"rule": plan.audience_text, "matched": holds(plan.audience)}
    segments, first = [], None
    for seg in plan.segments:
        hit = holds(seg.rule) if audience["matched"] else None
        segments.append({"name": seg.name, "rule": seg.rule_text or "else", "matched": hit})
        if hit and first is None:
            first = seg.name
    return audience, segments, first


def _tier_text(plan: Plan, tier: TierPlan, why: str) -> str:
    budget = plan.guardrails.budget
    return SKIPPED.get(why, why).format(purpose=tier.purpose, consent=tier.consent_channel, capacity=tier.capacity,
                                        budget=f" ({budget.amount:,.0f} {budget.currency} a run)" if budget else "")


def _tiers(plan: Plan, row: dict) -> list[dict]:
    """Each tier of the ledger's segment: chosen, skipped (and why, from `skipped`) or not reached. A held-out
    row's tier is the one they would have had (the ledger keeps it so tier-level lift compares like with like)."""
    seg = next((s for s in plan.segments if s.name == row.get("segment")), None)
    if seg is None:
        return []
    skipped = dict(part.split(":", 1) for part in (row.get("skipped") or "").split() if ":" in part)
    chosen = None if pd.isna(row.get("tier")) else int(row["tier"])
    out = []
    for i, t in enumerate(seg.tiers):
        offer = f"{t.offer.coupon_pool} ({t.offer.unit_cost:g} {t.offer.currency})" if t.offer else None
        entry = {"tier": i + 1, "channel": t.channel, "offer": offer, "capacity": t.capacity}
        if chosen == i:
            entry["outcome"] = "would have been chosen (held out: not sent)" if row.get("status") == "held_out" \
                else "chosen"
        elif str(i) in skipped:
            entry.update(outcome="skipped", why=skipped[str(i)], text=_tier_text(plan, t, skipped[str(i)]))
        else:
            entry["outcome"] = "not reached"
        out.append(entry)
    return out


def _tiers_now(engine: Engine, plan: Plan, segment: str | None, customer_id: str, as_of: dt.date) -> list[dict]:
    """Without a ledger row: each tier of the segment the rules pick, with the customer's consent and
    suppressions as they stand (capacity and budget depend on the whole run, so they are not judged)."""
    from tasks.allocate import active_consents, consent_effective_at, suppressed_for

    seg = next((s for s in plan.segments if s.name == segment), None)
    if seg is None:
        return []
    pairs = {(t.consent_channel, t.purpose) for t in seg.tiers}
    granted = active_consents(engine, [customer_id], pairs, consent_effective_at(as_of))
    blocked = suppressed_for(engine, [customer_id])
    out = []
    for i, t in enumerate(seg.tiers):
        offer = f"{t.offer.coupon_pool} ({t.offer.unit_cost:g} {t.offer.currency})" if t.offer else None
        if (customer_id, None) in blocked or (customer_id, t.consent_channel) in blocked:
            why = "suppressed"
        elif (customer_id, t.consent_channel, t.purpose) not in granted:
            why = "no_consent"
        else:
            why = None
        entry = {"tier": i + 1, "channel": t.channel, "offer": offer, "capacity": t.capacity,
                 "outcome": "would be eligible (capacity and budget permitting)" if why is None else "would be skipped"}
        if why:
            entry.update(why=why, text=_tier_text(plan, t, why))
        out.append(entry)
    return out


def _assignment(plan: Plan, config: ProjectConfig, customer_id: str, row: dict | None) -> dict[str, Any]:
    """Holdout, global control and variant, recomputed from the stable hashes (and the ledger's record)."""
    from tasks import guardrails

    out: dict[str, Any] = {}
    e = plan.experiment
    if e is not None and e.holdout_percent > 0:
        bucket = float(guardrails.buckets([customer_id], "holdout", plan.name, e.salt)[0])
        out["holdout"] = {"held_out": bucket < e.holdout_percent, "bucket": round(bucket, 2),
                          "percent": e.holdout_percent}
    else:
        out["holdout"] = {"held_out": False, "percent": 0}
    control = config.control_group
    in_control = bool(guardrails.in_control_group([customer_id], plan, control)[0])
    out["global_control"] = {"in_control": in_control, "percent": control.percent if control else 0}
    if row is not None and row.get("segment") and not pd.isna(row.get("tier")):
        seg = next((s for s in plan.segments if s.name == row["segment"]), None)
        if seg is not None and int(row["tier"]) < len(seg.tiers) and seg.tiers[int(row["tier"])].variants:
            tier = seg.tiers[int(row["tier"])]
            picked = guardrails.pick_variants([customer_id], plan, f"{seg.name}/{int(row['tier'])}", tier.variants)[0]
            out["variant"] = {"variant": row.get("variant"), "by_hash": picked,
                              "splits": {v.name: v.split for v in tier.variants}}
    return out


def _conversions(engine: Engine, plan: Plan, customer_id: str, as_of: dt.date) -> dict[str, Any] | None:
    """Goal events (orders for order.placed) in the goal window after the touch time the report uses."""
    from tasks.measure import touch_instant

    if plan.goal is None:
        return None
    start = touch_instant(plan, as_of)
    stop = start + dt.timedelta(days=plan.goal.window_days)
    o = orders.c
    with engine.connect() as conn:
        bought = conn.execute(select(o.ordered_at, o.amount).where(
            o.customer_id == customer_id, o.ordered_at >= start, o.ordered_at < stop, *limits.good_orders())).all()
        if plan.goal.event == "order.placed":
            goal = [r[0] for r in bought]
        else:
            e = events.c
            goal = conn.execute(select(e.occurred_at).where(e.customer_id == customer_id, e.type == plan.goal.event,
                                                            e.occurred_at >= start, e.occurred_at < stop)).scalars().all()
        known = conn.execute(select(func.max(o.ordered_at)).where(*limits.good_orders())).scalar()
    first = min((pd.Timestamp(t) for t in goal), default=None)
    return {"event": plan.goal.event, "window_days": plan.goal.window_days, "touch_at": start.isoformat(sep=" "),
            "conversions": len(goal),
            "days_to_first": None if first is None else round((first - pd.Timestamp(start)).total_seconds() / 86400, 1),
            "orders": len(bought), "revenue": round(float(sum(r[1] for r in bought)), 2),
            "window_complete": known is not None and pd.Timestamp(known) >= pd.Timestamp(stop)}


def _features_view(features: pd.DataFrame) -> dict[str, Any]:
    if features.empty:
        return {}
    row = features.iloc[0]
    return {k: _plain(v) for k, v in row.items() if k not in HIDDEN}


def _plain(v: Any) -> Any:
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) or (not isinstance(v, str) and pd.isna(v)):
        return None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return round(float(v), 4)
    return v if isinstance(v, (int, str, bool)) else str(v)


def decision(engine: Engine, config: ProjectConfig, customer_id: str, name: str, as_of: dt.date,
             row: dict | None, others: list[dict]) -> dict[str, Any]:
    """One playbook's decision about the customer on one day, with everything that explains it."""
    plan, problem = _plan_for(name, config)
    notes = [problem] if problem else []
    if plan is not None and row is not None and row["plan_hash"] != plan.plan_hash:
        notes.append(f"the playbook changed since this decision (plan {row['plan_hash']} then, {plan.plan_hash} "
                     "now): rules and tiers shown are today's")
    features = customer_features(engine, customer_id, as_of)
    if features.empty:
        notes.append(f"not a customer yet on {as_of}: no features")
    model, note = _model(engine, plan, row.get("model_version") if row else None)
    notes += [note] if note else []
    score = _score(features, model)
    if plan is not None and not plan.model:
        score["note"] = "this playbook uses no churn model (model: none)"
    if row is not None and row.get("score") is not None and not pd.isna(row["score"]):
        score["recorded_score"] = round(float(row["score"]), 4)
    out: dict[str, Any] = {"playbook": name, "as_of": as_of.isoformat(), "features": _features_view(features),
                           "score": score, "notes": notes, "currency": _currency(plan, config)}
    if row is not None:
        out["ledger"] = {k: _plain(row.get(k)) for k in ("status", "reason", "segment", "channel", "variant",
                                                          "template", "due_at", "cost", "plan_hash", "run_id",
                                                          "touch_key", "created_at", "updated_at")}
        # the ledger counts tiers from 0 (touches.tier); what explain shows counts from 1, as plan and report
        out["ledger"]["tier"] = None if pd.isna(row.get("tier")) else int(row["tier"]) + 1
        for key in ("due_at", "created_at", "updated_at"):  # to the second: microseconds say nothing here
            out["ledger"][key] = _utc_text(row.get(key))
        zone = out["features"].get("timezone")
        due = _due_text(row.get("due_at"), zone)
        out["ledger"]["due_local"] = due
        reason = row.get("reason")
        if reason and row["status"] in ("dropped", "held_out"):
            out["ledger"]["why"] = dropped_text(plan, str(reason)) + (f" (it was due {due})" if due else "")
        if row["status"] == "deferred":
            out["ledger"]["why"] = f"deferred by quiet hours; due {due}"
        elif row["status"] == "sent" and due:
            out["ledger"]["why"] = f"deferred by quiet hours until {due}, then sent"

    else:
        out["ledger"] = None
        notes.append(f"no ledger row for {as_of}: the playbook did not run that day or did not select this "
                     "customer (what its rules say is below)")
    out["follow_ups"] = [{k: _plain(r.get(k)) for k in ("step", "as_of", "status", "reason", "channel")} for r in others]
    if plan is None:
        return out
    frame = features.assign(churn_score=score["churn_score"]) if not features.empty else features
    out["audience"], out["segments"], out["matched_segment"] = _rules(plan, frame, as_of)
    if row is not None and row.get("segment") and out["matched_segment"] not in (None, row["segment"]):
        notes.append(f"the rules now pick {out['matched_segment']}, the run picked {row['segment']}: the data "
                     "for that day changed since (late orders, a backfill) or the model's score moved")
    out["tiers"] = _tiers(plan, row) if row is not None else _tiers_now(engine, plan, out["matched_segment"],
                                                                      customer_id, as_of)
    out["assignment"] = _assignment(plan, config, customer_id, row)
    out["conversions"] = _conversions(engine, plan, customer_id, as_of) if row is not None else None
    return out


def _utc_text(value: Any) -> str | None:
    """A naive UTC time from the ledger as `2026-11-01 08:00:00`, to the second."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return pd.Timestamp(value).floor("s").strftime("%Y-%m-%d %H:%M:%S")


def _due_text(value: Any, zone: str | None) -> str | None:
    """When a deferred touch was due, on the customer's clock first: `2026-11-01 09:00 Europe/Paris (08:00 UTC)`."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    at = pd.Timestamp(value).floor("s").to_pydatetime().replace(tzinfo=dt.UTC)
    try:
        tz = zoneinfo.ZoneInfo(zone) if zone else None
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        tz = None  # judged as UTC, as the run judged it
    if tz is None or zone in ("UTC", "Etc/UTC"):
        return f"{at:%Y-%m-%d %H:%M} UTC"
    local = at.astimezone(tz)
    same_day = local.date() == at.date()
    return f"{local:%Y-%m-%d %H:%M} {zone} ({at:%H:%M} UTC{'' if same_day else f' on {at:%Y-%m-%d}'})"


def _currency(plan: Plan | None, config: ProjectConfig) -> str:
    from tasks.measure import currency_of

    return currency_of(plan, config.defaults.currency) if plan is not None else config.defaults.currency


def dropped_text(plan: Plan | None, reason: str) -> str:
    if plan is None:
        return DROPPED.get(reason, reason)
    g = plan.guardrails
    cap = (f"{counted(g.frequency_cap.max, 'touch', 'touches')} in {counted(g.frequency_cap.days, 'day')}"
           if g.frequency_cap else "the cap")
    quiet = f"{g.quiet_hours.start}-{g.quiet_hours.end}" if g.quiet_hours else "quiet hours"
    return DROPPED.get(reason, reason).format(cap=cap, quiet=quiet)


def explain(engine: Engine, config: ProjectConfig, customer_id: str, *, playbook: str | None = None,
            as_of: dt.date | None = None) -> dict[str, Any]:
    """The decision trace as plain data: one entry per (playbook, day) explained."""
    require_customer(engine, customer_id)
    name = None
    if playbook is not None:
        plan, problem = _plan_for(playbook, config)
        if plan is None:
            from flows.commands import resolve_playbook

            resolve_playbook(playbook)  # raises the usual L303 with a did-you-mean
        name = plan.name
    rows = ledger_rows(engine, customer_id, name, as_of)
    main = rows[rows["step"] == "main"]
    decisions = []
    for pb, group in main.groupby("playbook", sort=True):
        row = group.iloc[0].to_dict()  # newest day first
        day = row["as_of"]
        later = rows[(rows["playbook"] == pb) & (rows["step"] != "main") & (rows["as_of"] >= day)]
        decisions.append(decision(engine, config, customer_id, str(pb), day, row, later.to_dict("records")))
    if name is not None and not decisions:
        decisions.append(decision(engine, config, customer_id, playbook, as_of or _today(), None, []))
    report: dict[str, Any] = {"customer_id": customer_id, "as_of": as_of.isoformat() if as_of else None,
                              "decisions": decisions}
    if not decisions:
        day = as_of or _today()
        features = customer_features(engine, customer_id, day)
        model, _ = _model(engine, None, None)
        report["features_as_of"] = day.isoformat()
        report["features"] = _features_view(features)
        report["score"] = _score(features, model)
        report["note"] = ("no playbook decided about this customer" + (f" on {as_of}" if as_of else "")
                          + "; pass --playbook NAME to see what its rules say")
    return report


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


# ---- text --------------------------------------------------------------------------------------

def _yes(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "no")


def _features_text(features: dict[str, Any]) -> list[str]:
    items = [f"{k} {v if v is not None else 'null'}" for k, v in features.items()]
    lines, line = [], "   "
    for item in items:
        if len(line) + len(item) > 100:
            lines.append(line)
            line = "   "
        line += " " + item + ";"
    return lines + ([line] if line.strip() else [])


def _score_text(s: dict[str, Any]) -> list[str]:
    if s.get("error"):
        return [f"  churn score: not computed ({s['error']})"]
    if s.get("note"):
        return [f"  churn score: none: {s['note']}"]
    if s.get("churn_score") is None:
        why = "no order by then: churn is defined for buyers" if s.get("model_version") else "no model registered"
        return [f"  churn score: none ({why})"]
    recorded = f" (the run recorded {s['recorded_score']:.4f})" if s.get("recorded_score") is not None else ""
    lines = [f"  churn score {s['churn_score']:.4f}{recorded}, model {s['model_version']}"]
    lines += [f"    reason: {r}" for r in s["reasons"]]
    return lines


def format_text(report: dict[str, Any]) -> str:
    lines = [f"customer {report['customer_id']}"]
    if not report["decisions"]:
        lines.append(f"  {report['note']}")
        lines += _score_text(report["score"])
        if report["features"]:
            lines.append(f"  features as of {report['features_as_of']}:")
            lines += _features_text(report["features"])
        else:
            lines.append(f"  not a customer yet on {report['features_as_of']}: no features")
        return "\n".join(lines)
    for d in report["decisions"]:
        lines += ["", f"{d['playbook']} as of {d['as_of']}"]
        led = d.get("ledger")
        if led:
            would = "would-be " if led["status"] == "held_out" else ""
            where = f"segment {led['segment']}" + (f", {would}tier {led['tier']} ({led['channel']})" if led["tier"] else "")
            arm = f", variant {led['variant']}" if led.get("variant") else ""
            lines.append(f"  decision: {led['status']}" + (f" ({led['reason']})" if led.get("reason") else "")
                         + f"; {where}{arm}")
            if led.get("why"):
                lines.append(f"    why: {led['why']}")
            lines.append(f"  ledger: plan {led['plan_hash']}, touch {led['touch_key']}, written "
                         f"{led['created_at']} UTC, updated {led['updated_at']} UTC"
                         + (f", offer cost {led['cost']:g} {d['currency']}" if led.get("cost") else ""))
        for n in d["notes"]:
            lines.append(f"  note: {n}")
        lines += _score_text(d["score"])
        if "audience" in d:
            a = d["audience"]
            lines.append(f"  audience: {a['rule'] or 'everyone'} -> {_yes(a['matched'])}")
            lines.append("  segments (first match wins):" if a["matched"] else "  not in the audience: no segment applies")
            for s in d["segments"] if a["matched"] else []:
                mark = "  <- matched" if s["name"] == d["matched_segment"] else ""
                lines.append(f"    {s['name']}: {s['rule']} -> {_yes(s['matched'])}{mark}")
                if mark:
                    break
        if d.get("tiers"):
            lines.append(f"  tiers of {led['segment'] if led else d['matched_segment']}:"
                         + ("" if led else " (consent and suppressions as they stand now)"))
            for t in d["tiers"]:
                offer = f" + {t['offer']}" if t["offer"] else ""
                why = f"{t['outcome']}: {t['text']}" if t.get("text") else t["outcome"]
                lines.append(f"    {t['tier']}. {t['channel']}{offer}: {why}")
        if "assignment" in d:
            a = d["assignment"]
            h = a["holdout"]
            hold = (f"holdout: {'held out' if h['held_out'] else 'not held out'} (hash bucket {h['bucket']:.2f}; "
                    f"below {h['percent']:g} is held out)" if h["percent"] else "holdout: none in this playbook")
            g = a["global_control"]
            ctl = (f"; global control group: {_yes(g['in_control'])} ({g['percent']:g}%)" if g["percent"] else "")
            lines.append(f"  {hold}{ctl}")
            if "variant" in a:
                v = a["variant"]
                splits = ", ".join(f"{k} {s:g}%" for k, s in v["splits"].items())
                lines.append(f"  variant: {v['variant']} (by hash: {v['by_hash']}; splits {splits})")
        for f in d["follow_ups"]:
            lines.append(f"  follow-up {f['step']} on {f['as_of']}: {f['status']}"
                         + (f" ({f['reason']})" if f.get("reason") else "")
                         + (f" via {f['channel']}" if f.get("channel") else ""))
        c = d.get("conversions")
        if c:
            seen = "" if c["window_complete"] else " (window not over yet: the warehouse's orders end before it)"
            first = f", the first {counted(c['days_to_first'], 'day')} after" if c["days_to_first"] is not None else ""
            lines.append(f"  after the touch ({c['touch_at']} UTC): {c['conversions']} {c['event']} in the "
                         f"{c['window_days']}-day goal window{first}; {counted(c['orders'], 'order')}, "
                         f"{c['revenue']:,.2f} {d['currency']} revenue{seen}")
        if d["features"]:
            lines.append(f"  features as of {d['as_of']}:")
            lines += _features_text(d["features"])
    return "\n".join(lines)
