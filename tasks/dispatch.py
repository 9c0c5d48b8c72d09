"""Dispatch: write every decision to the touch ledger, then deliver the planned touches, batch by batch.

Order of writes, so a crash never loses or doubles a touch: ledger rows `planned` (insert-if-absent,
one transaction; on PostgreSQL many `dropped` rows go in beside it, on their own connection, and are
in before the step ends) -> per batch, claim the planned keys (tasks/claims.py: a conditional UPDATE, so two
concurrent runs never both own a key) -> channel delivery -> ledger rows `sent` or `failed`. A rerun
for the same as-of date finds the keys already in the ledger: sent ones are skipped, planned ones (in
flight at the crash) are delivered again with the same key once their claim's lease ran out. A
provider that is down stops the run with DispatchError L602; its keys stay `planned` for the rerun.
A dry run writes nothing and returns previews.

Every decision is a ledger row: `planned` -> `sent`; `dropped` with its reason (`no_consent`,
`suppressed`, `frequency_cap`, `quiet_hours`, `capacity`, `budget`); `failed` with the provider's
message (a dead letter: refused, never retried); `held_out` (reason `holdout`, the control
group); `deferred` (reason `quiet_hours`, to be sent when the quiet hours end).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from flows.plan import Plan
from infra.errors import DispatchError
from infra.faults import crash_point
from infra.settings import ProjectConfig
from infra.warehouse.bulk import among, chunks, fetch_frame, utcnow
from infra.warehouse.schema import touches
from tasks import claims
from tasks.channels import Channel, Delivery, open_channel
from tasks.channels.base import safe_text
from tasks.render import MAX_MESSAGE_CHARS, RenderFailure, coupon_code, render_rows, unsubscribe_url
from tasks.common import IO_RETRIES

BATCH = 5_000
BACKGROUND_DROPS = 20_000  # from this many drop rows on, PostgreSQL writes them beside the delivery
STEP = "main"
log = logging.getLogger("lifecycle.dispatch")


@dataclass
class DispatchResult:
    sent: dict[str, int] = field(default_factory=dict)  # channel -> touches delivered in this run
    already_sent: int = 0  # delivered by an earlier run for the same as-of date
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> customers
    outboxes: dict[str, str] = field(default_factory=dict)  # channel -> where to read it
    deferred: int = 0  # kept for after the quiet hours
    previews: list[dict] = field(default_factory=list)  # dry run: a few rendered messages
    segment_channel: dict[str, dict[str, int]] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)  # dead-lettered: provider reason -> touches
    retried: int = 0  # provider calls repeated after a timeout, 5xx or 429
    claimed_elsewhere: int = 0  # planned keys another run still holds (live, or its state is not known)
    progress_id: object | None = None  # the flow run's progress artifact, when there is one
    segment_tier: dict[str, dict[str, int]] = field(default_factory=dict)  # segment -> "1 sms" -> touches
    offer_cost: float = 0.0  # coupon unit cost committed by the planned and deferred touches
    taken_over: int = 0  # planned keys taken from a run that is gone (killed, crashed), without waiting
    holders: dict[str, int] = field(default_factory=dict)  # who holds the claimed_elsewhere keys -> keys


def merge_results(results: list[DispatchResult]) -> DispatchResult:
    """Several dispatches' results as one (a sharded run's shards, a replayed deliverer's hours): counts
    added (also per segment and channel), outboxes and previews joined, as if one dispatch had done it all."""
    out = DispatchResult()
    for result in results:
        for f in dataclasses.fields(DispatchResult):
            setattr(out, f.name, _combine(getattr(out, f.name), getattr(result, f.name)))
    out.progress_id = None
    return out


def _combine(a: Any, b: Any) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        return {**a, **{k: _combine(a[k], v) if k in a else v for k, v in b.items()}}
    if isinstance(a, list) and isinstance(b, list):
        return a + b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return a + b
    return b if b is not None else a  # outbox locations: the same place from every part


def touch_keys(plan: Plan, customer_ids: pd.Index, as_of: dt.date, step: str = STEP) -> np.ndarray:
    """Deterministic key per (playbook, version, step, customer, daily window)."""
    prefix = f"{plan.name}|{plan.version}|{step}|{as_of.isoformat()}|"
    ids = np.asarray(customer_ids, dtype=object).tolist()  # a pandas string index iterates 4x slower
    return np.array([hashlib.sha256((prefix + str(c)).encode()).hexdigest()[:32] for c in ids])


def _message_rows(frame: pd.DataFrame, plan: Plan, offer) -> list[dict]:
    """The template context per row: the customer's columns plus offer, variant and unsubscribe link."""
    clean = frame.astype(object).where(frame.notna(), None)
    rows = clean.reset_index().to_dict("records")
    for row in rows:
        row["playbook"] = plan.name
        row["reasons"] = row.pop("churn_reasons", None)
        row["unsubscribe_url"] = unsubscribe_url(str(row["customer_id"]), str(row.get("channel")))
        if offer is not None:
            row["offer"] = {**offer.model_dump(), "code": coupon_code(offer.coupon_pool, str(row.get("touch_key")))}
    return rows


def render_messages(frame: pd.DataFrame, plan: Plan, step: str = STEP,
                    limits: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Rendered subject/body for each allocated row (grouped by segment, tier and variant: one template each).

    A message that cannot be rendered (an error, the time limit, over the size limit or its channel's
    `limits[channel]` characters) has empty text and its reason in `render_error`: that touch's failure,
    never the batch's."""
    parts = []
    variants = frame["variant"] if "variant" in frame else pd.Series(pd.NA, index=frame.index, dtype="string")
    for seg in plan.segments:
        for i, tier in enumerate(seg.tiers):
            for arm_name in [v.name for v in tier.variants] or [None]:
                in_arm = variants.isna() if arm_name is None else (variants == arm_name).fillna(False)
                group = frame[(frame["segment"] == seg.name) & (frame["tier"] == i) & in_arm.to_numpy()]
                if group.empty:
                    continue
                arm = tier.arm(arm_name)
                rows = _message_rows(group, plan, arm.offer)
                most = (limits or {}).get(tier.channel, MAX_MESSAGE_CHARS)
                body = render_rows(arm.body, rows, html=arm.html, name=arm.template, partials=plan.partials,
                                   max_chars=most)
                subject = (render_rows(arm.subject, rows, name=f"{arm.template} subject", partials=plan.partials)
                           if arm.subject else [None] * len(rows))
                error = [_failure(b, s) for b, s in zip(body, subject)]
                parts.append(pd.DataFrame({
                    "touch_key": group["touch_key"].to_numpy(), "customer_id": group.index.to_numpy(),
                    "playbook": plan.name, "step": step, "segment": seg.name, "tier": i, "variant": arm_name,
                    "channel": tier.channel, "template": arm.template,
                    "subject": [None if isinstance(t, RenderFailure) else t for t in subject],
                    "body": ["" if isinstance(t, RenderFailure) else t for t in body],
                    "html": arm.html, "offer": [r.get("offer") for r in rows],
                    "unsubscribe_url": [r["unsubscribe_url"] for r in rows],
                    "advisor_id": [r.get("advisor_id") for r in rows], "render_error": error,
                }))
    cols = ["touch_key", "customer_id", "playbook", "step", "segment", "tier", "variant", "channel", "template",
            "subject", "body", "html", "offer", "unsubscribe_url", "advisor_id", "render_error"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def _failure(body: str | RenderFailure, subject: str | RenderFailure | None) -> str | None:
    """Why a message cannot go (the body's reason first), or None."""
    for part, what in ((body, ""), (subject, "subject: ")):
        if isinstance(part, RenderFailure):
            return (what + part.reason)[:128]
    return None


def ledger_status(frame: pd.DataFrame) -> np.ndarray:
    """The ledger status of each allocated row."""
    tier = frame["tier"].to_numpy()
    deferred = frame["deferred"].to_numpy(dtype=bool) if "deferred" in frame else np.zeros(len(frame), dtype=bool)
    held = frame["reason"].isin(["holdout", "global_control"]).fillna(False).to_numpy(dtype=bool)
    return np.select([(tier >= 0) & ~deferred, deferred, held], ["planned", "deferred", "held_out"], "dropped")


def dispatch_frame(allocated: pd.DataFrame, plan: Plan, as_of: dt.date, *, engine: Engine,
                   config: ProjectConfig, run_id: str | None, model_version: str | None,
                   dry_run: bool, step: str = STEP, window: dt.date | None = None,
                   plan_hash: str | None = None) -> DispatchResult:
    """Ledger, then delivery, for one step: `main`, or a follow-up (keyed by the journey's entry day, `window`)."""
    result = DispatchResult()
    limits = message_limits(config)
    frame = allocated.copy(deep=False)  # copy-on-write: the caller's frame stays as it was
    frame["touch_key"] = touch_keys(plan, frame.index, window or as_of, step)
    if "variant" not in frame:
        frame["variant"] = pd.Series(pd.NA, index=frame.index, dtype="string")
    templates = {(s.name, i, v): t.arm(v).template for s in plan.segments for i, t in enumerate(s.tiers)
                 for v in [None, *(a.name for a in t.variants)]}
    chosen = np.full(len(frame), None, dtype=object)
    for (s, t, v), rows in frame.groupby(["segment", "tier", "variant"], dropna=False, sort=False).indices.items():
        chosen[rows] = templates.get((s, t, None if pd.isna(v) else v))
    frame["template"] = chosen
    frame["status"] = ledger_status(frame)
    planned = frame[frame["status"] == "planned"]
    dropped = frame[frame["status"].isin(["dropped", "held_out"])]
    result.deferred = int((frame["status"] == "deferred").sum())
    result.dropped = {str(k): int(v) for k, v in dropped["reason"].value_counts().items()}
    result.segment_channel = {
        seg: {str(ch): int(n) for ch, n in grp["channel"].value_counts().items()}
        for seg, grp in planned.groupby("segment")
    }
    touched = frame[frame["status"].isin(["planned", "deferred"])]
    result.segment_tier = {
        seg: {f"tier {t + 1} {ch}": int(n) for (t, ch), n in grp.groupby(["tier", "channel"]).size().items()}
        for seg, grp in touched.groupby("segment")
    }
    result.offer_cost = float(pd.to_numeric(_column(touched, "cost", 0.0), errors="coerce").fillna(0).sum())
    if dry_run:
        result.sent = {str(k): int(v) for k, v in planned["channel"].value_counts().items()}
        preview = render_messages(planned.groupby(["segment", "tier"]).head(2), plan, step, limits)
        broken = preview["render_error"].notna()
        preview.loc[broken, "body"] = "(would fail: " + preview.loc[broken, "render_error"] + ")"
        names = planned["first_name"] if "first_name" in planned else pd.Series(None, index=planned.index, dtype=object)
        preview["first_name"] = names.reindex(preview["customer_id"]).to_numpy()  # to mask them where it is shown
        result.previews = preview[["segment", "tier", "variant", "template", "customer_id", "first_name", "subject",
                                   "body"]].to_dict("records")
        log_summary(plan, result, dry_run=True)
        return result

    status = _ledger_status(engine, frame["touch_key"].to_numpy(dtype=object),
                            (plan.name, as_of) if step == STEP and window is None else None)
    now = utcnow()
    lost = _take_over(engine, frame[frame["status"].isin(["planned", "deferred"])], now)
    if lost:  # a rival touch we outrank was delivered or claimed meanwhile: it stands, ours goes
        hit = frame.index.isin(list(lost)) & ~frame["touch_key"].isin(status)
        frame.loc[hit, "status"], frame.loc[hit, "reason"] = "dropped", "priority"
        planned = frame[frame["status"] == "planned"]
        result.dropped["priority"] = result.dropped.get("priority", 0) + int(hit.sum())
    new = frame[~frame["touch_key"].isin(status)]
    deferring = deferred_payloads(new[new["status"] == "deferred"], plan, step, limits)
    if deferring["error"].notna().any():  # a deferred message that cannot be rendered fails now, not when due
        new = new.copy(deep=False)
        broken = deferring.index[deferring["error"].notna()]
        new.loc[broken, "status"], new.loc[broken, "reason"] = "failed", deferring.loc[broken, "error"]
        result.deferred -= len(broken)
        for why, n in deferring.loc[broken, "error"].str.split(":").str[0].value_counts().items():
            result.failed[str(why)] = result.failed.get(str(why), 0) + int(n)
    ledger = pd.DataFrame({
        "touch_key": new["touch_key"].to_numpy(), "customer_id": new.index.to_numpy(),
        "segment": new["segment"].to_numpy(), **_recorded_tier(new), "template": new["template"].to_numpy(),
        "score": pd.to_numeric(new["churn_score"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan),
        "status": new["status"].to_numpy(), "reason": _nullable(new["reason"]),
        "cost": _column(new, "cost", np.nan).astype("float64").where(new["tier"].to_numpy() >= 0).to_numpy(),
        "skipped": _nullable(_column(new, "skipped", None)),
        "due_at": _column(new, "due_at", pd.NaT).where(new["status"].to_numpy() == "deferred").to_numpy(),
        "payload": deferring["payload"].reindex(new.index).to_numpy(),
    })
    ledger["tier"] = ledger["tier"].astype("Int64").where(ledger["tier"] >= 0)
    run = {"run_id": run_id, "playbook": plan.name, "playbook_version": plan.version,
           "plan_hash": plan_hash or plan.plan_hash, "step": step, "as_of": as_of, "model_version": model_version,
           "priority": plan.guardrails.priority, "created_at": now, "updated_at": now}
    pending = _write_ledger(engine, ledger, run)  # a concurrent run may have written some of these keys first
    crash_point("ledger written")

    already = pd.Series([status.get(k, "planned") for k in planned["touch_key"]], index=planned.index, dtype=object)
    result.already_sent = int((already == "sent").sum())
    todo = planned[already.to_numpy() == "planned"]
    result.progress_id = start_progress(plan, len(todo))
    try:
        deliver(engine, config, todo, lambda batch: render_messages(batch, plan, step, limits), result,
                f"{plan.name} {step} on {as_of}")
    except BaseException:
        if pending is not None:
            pending.exception()  # let the drops finish; the delivery's error is the one to report
        raise
    if pending is not None:
        pending.result()  # the drops are in the ledger before the step ends (or their error is raised)
    log_summary(plan, result)
    return result


def _write_ledger(engine: Engine, ledger: pd.DataFrame, run: dict) -> Future | None:
    """Write the decisions. Drops are never delivered, so they need not be durable before anything is
    sent: on PostgreSQL, when there are many (BACKGROUND_DROPS), a connection of their own writes them
    while this one writes the rest and delivers (a database-side insert of 170,000 rows takes 3 s).
    SQLite has one writer at a time: there everything is written first, in one transaction."""
    drops = (ledger["status"] == "dropped").to_numpy()
    if engine.dialect.name != "postgresql" or drops.sum() < BACKGROUND_DROPS:
        claims.insert_absent(engine, ledger, run)
        return None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-drops")
    pending = pool.submit(claims.insert_absent, engine, ledger[drops], run)
    pool.shutdown(wait=False)
    try:
        claims.insert_absent(engine, ledger[~drops], run)
    except BaseException:
        pending.exception()
        raise
    return pending


def deliver(engine: Engine, config: ProjectConfig, todo: pd.DataFrame,
            render: Callable[[pd.DataFrame], pd.DataFrame], result: DispatchResult, what: str) -> None:
    """Claim, send and mark `todo` (rows with touch_key and channel), channel by channel, batch by batch.

    Shared by dispatch and the delivery of deferred touches. A provider that is down stops with L602 (a
    misconfigured channel with L604) and leaves the undelivered keys planned (unclaimed) for the rerun.
    Whatever ends the delivery, an exception or an interrupt included, what the channel reported done is
    recorded and every claim this process holds is released before it returns.
    """
    claimer = claims.Claimer(engine)
    try:
        _deliver(engine, config, todo, render, result, what, claimer)
    finally:
        try:
            claimer.close()
        except Exception:  # noqa: BLE001 - the delivery's own outcome (or error) is what to report
            log.warning("dispatch %s: claims not released (the warehouse did not answer); a rerun takes them "
                        "over once this process has ended", what, exc_info=True)


def _deliver(engine: Engine, config: ProjectConfig, todo: pd.DataFrame,
             render: Callable[[pd.DataFrame], pd.DataFrame], result: DispatchResult, what: str,
             claimer: claims.Claimer) -> None:
    total = len(todo)
    done = 0
    for channel_name, group in todo.groupby("channel"):
        channel = open_channel(str(channel_name), config.channel(str(channel_name)), engine)
        result.outboxes[str(channel_name)] = channel.location
        sent = 0
        for start in range(0, len(group), BATCH):
            batch = group.iloc[start : start + BATCH]
            claimed = claimer.claim(list(batch["touch_key"]))
            result.taken_over += claimed.taken_over
            for holder in claimed.held:
                result.claimed_elsewhere += holder.keys
                result.holders[holder.describe(claimer.host)] = holder.keys + result.holders.get(
                    holder.describe(claimer.host), 0)
            crash_point("claimed")
            done += len(batch)
            if not claimed.mine:
                continue
            delivery = _send(engine, channel, render(batch[batch["touch_key"].isin(claimed.mine)]), claimer.token,
                             f"{channel_name} ({what})")
            crash_point("delivered")
            claims.finish(engine, claimer.token, delivery)
            crash_point("marked")
            sent += len(delivery.sent)
            result.retried += delivery.retried
            for why, n in delivery.failed_reasons().items():
                result.failed[why] = result.failed.get(why, 0) + n
            progress(result, done, total)
            if delivery.error is not None:
                result.sent[str(channel_name)] = result.sent.get(str(channel_name), 0) + sent
                log.info("dispatch %s: %s", what, counts_line(result))
                left = len(delivery.undelivered) + len(group) - start - len(batch)
                if delivery.code == "L606":
                    raise DispatchError(
                        f"{what}: {delivery.error}; channel {channel_name} stopped after {sent:,} sent",
                        hint="check the warehouse, then rerun the same playbook and as-of date: what was "
                             "delivered is recorded, or taken over from this run once it has ended", code="L606")
                if delivery.code == "L604":
                    raise DispatchError(
                        f"channel {channel_name} is misconfigured: {delivery.error}; {what}: {sent:,} sent, "
                        f"{sum(result.failed.values()):,} failed, {left:,} not delivered (left planned)",
                        hint=f"fix channels.{channel_name} in the project config (lifecycle.yaml), then rerun the "
                             "same playbook and as-of date: nothing was dead-lettered for it", code="L604")
                raise DispatchError(
                    f"channel {channel_name} is failing: {delivery.error}; {what}: "
                    f"{sent:,} sent, {sum(result.failed.values()):,} failed, {left:,} not delivered (left planned)",
                    hint="check the provider, then rerun the same playbook and as-of date: "
                         "the ledger delivers only what is still planned", code="L602")
        result.sent[str(channel_name)] = result.sent.get(str(channel_name), 0) + sent


def _send(engine: Engine, channel: Channel, messages: pd.DataFrame, token: str, what: str) -> Delivery:
    """One batch through its channel. A message that could not be rendered is its own dead letter. If
    the channel breaks off (an interrupt, a bug), what it reported done is recorded before the error goes
    on; the rest is released by the claimer."""
    delivery = Delivery()
    if "render_error" in messages:
        broken = messages["render_error"].notna().to_numpy()
        delivery.failed.update(zip(messages["touch_key"][broken], messages["render_error"][broken]))
        messages = messages[~broken]
    try:
        if len(messages):
            with claims.Marker(engine, token, delivery):
                channel.send_batch(for_consumers(messages), delivery)
    except BaseException as exc:
        delivery.undelivered.extend(delivery.outstanding(list(messages["touch_key"])))
        claims.finish(engine, token, delivery)
        if isinstance(exc, Exception):
            raise DispatchError(
                f"channel {what} broke off with {type(exc).__name__}: {safe_text(str(exc))}; "
                f"{len(delivery.sent):,} of the batch sent and recorded, the rest left planned",
                hint="this is a bug in lifecycle: report it with the log; a rerun of the same playbook and "
                     "as-of date delivers what is left", code="L605") from exc
        raise
    return delivery


def for_consumers(messages: pd.DataFrame) -> pd.DataFrame:
    """The messages as channels hand them on (outbox records, webhook bodies): `tier` numbered from 1, as
    plan, explain and report number tiers (the ledger's `touches.tier` counts from 0, internally)."""
    tier = pd.to_numeric(messages["tier"], errors="coerce") if "tier" in messages else None
    return messages if tier is None else messages.assign(tier=(tier + 1).astype("Int64"))


def start_progress(plan: Plan, total: int):
    """A progress artifact on the flow run for a long dispatch; None outside a flow run or for a small one."""
    if total < BATCH:
        return None
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return None
    from prefect.artifacts import create_progress_artifact

    return create_progress_artifact(0.0, key=f"{plan.name.replace('_', '-')}-dispatch",
                                    description=f"{plan.name}: share of {total:,} touches handled")


def progress(result: DispatchResult, done: int, total: int) -> None:
    """Keep the flow run's progress artifact current during long dispatches (no-op outside a flow run)."""
    if result.progress_id is None or not total:
        return
    try:
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(result.progress_id, progress=100.0 * done / total)
    except Exception:  # progress is a courtesy: never let it fail a delivery
        log.debug("progress artifact not updated", exc_info=True)


def deferred_payloads(frame: pd.DataFrame, plan: Plan, step: str = STEP,
                      limits: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Per deferred touch (by customer): `payload`, the JSON of its rendered message plus what to check
    again when it is due, or `error`, why its message cannot be rendered (then it fails now).

    Rendering now means the customer gets what was decided, even if the playbook changes meanwhile.
    """
    out = pd.DataFrame({"payload": pd.Series(dtype=object), "error": pd.Series(dtype=object)})
    if frame.empty:
        return out
    messages = render_messages(frame, plan, step, limits).set_index("customer_id", drop=False)
    cap = plan.guardrails.frequency_cap
    quiet = plan.guardrails.quiet_hours
    payloads, errors = {}, {}
    for cid, msg in zip(messages.index, records_of(messages)):
        if msg.pop("render_error", None) is not None:
            errors[cid] = messages.at[cid, "render_error"]
            continue
        tier = plan.tier(msg["segment"], int(msg["tier"]))
        payloads[cid] = json.dumps({
            "message": msg, "consent": [tier.consent_channel, tier.purpose],
            "cap": cap.model_dump() if cap else None, "quiet": quiet.model_dump() if quiet else None,
            "timezone": frame.at[cid, "timezone"] if "timezone" in frame else None,
        }, default=str, ensure_ascii=False)
    return pd.DataFrame({"payload": pd.Series(payloads, dtype=object), "error": pd.Series(errors, dtype=object)})


def message_limits(config: ProjectConfig) -> dict[str, int]:
    """The most characters a message may have, per channel that sets a limit of its own."""
    return {name: c.max_message_chars for name, c in config.channels.items() if c.max_message_chars is not None}


def records_of(frame: pd.DataFrame) -> list[dict]:
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def _column(frame: pd.DataFrame, name: str, default) -> pd.Series:
    return frame[name] if name in frame else pd.Series(default, index=frame.index)


def _recorded_tier(new: pd.DataFrame) -> dict[str, np.ndarray]:
    """Tier, channel and variant for the ledger: the chosen ones, and for held-out customers the ones
    they would have had (so tier-level lift compares like with like)."""
    tier = new["tier"].to_numpy().copy()
    channel = new["channel"].astype(object).to_numpy().copy()
    variant = _nullable(new["variant"]).copy()
    if "would_tier" in new:
        held = (new["status"] == "held_out").to_numpy() & (new["would_tier"].to_numpy() >= 0)
        tier[held] = new["would_tier"].to_numpy()[held]
        channel[held] = new["would_channel"].to_numpy()[held]
        variant[held] = _nullable(new["would_variant"])[held]
    return {"tier": tier, "channel": np.where(pd.isna(channel), None, channel), "variant": variant}


def _nullable(column: pd.Series) -> np.ndarray:
    """Text with None (not pd.NA) for missing values, which every database driver accepts."""
    values = column.astype(object).to_numpy()
    return np.where(pd.isna(values), None, values)


def _take_over(engine: Engine, frame: pd.DataFrame, now: dt.datetime) -> set[str]:
    """Cancel the lower-priority rival touches these customers had today; customers whose rival touch
    could not be cancelled (delivered or claimed in the meantime) are returned."""
    if "takes_over" not in frame:
        return set()
    wanted = {c: keys for c, keys in frame["takes_over"].items() if isinstance(keys, list) and keys}
    if not wanted:
        return set()
    keys = [k for ks in wanted.values() for k in ks]
    t = touches.c
    cancelled: set[str] = set()
    with engine.begin() as conn:
        for part in chunks(keys):
            conn.execute(update(touches).where(among(t.touch_key, part), t.status.in_(["planned", "deferred"]),
                                               t.claimed_by.is_(None))
                         .values(status="dropped", reason="priority", updated_at=now))
            cancelled.update(conn.execute(select(t.touch_key).where(
                among(t.touch_key, part), t.status == "dropped", t.reason == "priority")).scalars())
    return {c for c, ks in wanted.items() if not set(ks) <= cancelled}


def _ledger_status(engine: Engine, keys: np.ndarray, day: tuple[str, dt.date] | None = None) -> dict[str, str]:
    """The ledger status of those keys already written (by an earlier or a concurrent run).

    A main-step key names its playbook and as-of day, so with `day` = (playbook, as_of) the rows of
    that day are read by the ledger's (playbook, as_of) index: none on a day's first run, instead of a
    lookup per key."""
    t = touches.c
    found: dict[str, str] = {}
    with engine.connect() as conn:
        if day is not None:
            rows = fetch_frame(conn, select(t.touch_key, t.status).where(t.playbook == day[0], t.as_of == day[1]),
                               ["touch_key", "status"])
            rows = rows[rows["touch_key"].isin(keys)]
            return dict(zip(rows["touch_key"], rows["status"]))
        for part in chunks(keys):
            found.update(conn.execute(select(t.touch_key, t.status).where(among(t.touch_key, part))).all())
    return found


def counts_line(result: DispatchResult, dry_run: bool = False) -> str:
    """Counts only: no customer ids, addresses or message bodies ever reach the log. A dry run sends,
    drops and defers nothing: it says what it would do."""
    if dry_run:
        return (f"dry run: would send {result.sent}, would not touch {result.dropped}, would defer "
                f"{result.deferred}; nothing written or sent")
    return (f"sent {result.sent}, already sent {result.already_sent}, claimed by another run "
            f"{result.claimed_elsewhere}, dropped {result.dropped}, deferred {result.deferred}, "
            f"failed {result.failed}, retried {result.retried}")


def log_summary(plan: Plan, result: DispatchResult, dry_run: bool = False) -> None:
    log.info("dispatch %s: %s", plan.name, counts_line(result, dry_run))


@task(name="dispatch", cache_policy=NO_CACHE, **IO_RETRIES)
def dispatch(allocated: pd.DataFrame, plan: Plan, as_of: dt.date, *, engine: Engine, config: ProjectConfig,
             run_id: str | None, model_version: str | None, dry_run: bool) -> DispatchResult:
    return dispatch_frame(allocated, plan, as_of, engine=engine, config=config, run_id=run_id,
                          model_version=model_version, dry_run=dry_run)
