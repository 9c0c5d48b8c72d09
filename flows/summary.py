"""Run summaries as text: the terminal's (format_summary) and the counts both it and the flow's
artifacts print. Pure: no Prefect, no database.

What leaves here is masked (infra/redact.py): credentials in outbox locations and failure texts,
and in dry-run previews the customer's id and first name, as `lifecycle plan` shows its samples.
"""

from __future__ import annotations

from infra.redact import mask_id, mask_person, mask_secrets_in
from infra.wording import clipped, counted

PREVIEWS = 4  # dry-run previews in the terminal summary
PREVIEW_CHARS = 140  # of a preview's body; a longer one ends with an ellipsis


def format_summary(s: dict) -> str:
    """A run summary a person can read in the terminal."""
    title = f"{s['playbook']} v{s['version']} as of {s['as_of']}" + ("  (dry run: nothing written or sent)" if s["dry_run"] else "")
    lines = [title, f"  {counted(s['customers'], 'customer')}, {s['audience']:,} in the audience, "
                    f"{s['unmatched']:,} in no segment; plan {s['plan_hash']}, model {s['model_version'] or 'none'}"]
    channels = sorted({ch for per in s["segment_channel"].values() for ch in per})
    width = max([len(k) for k in s["segments"]] + [9])
    lines.append("  " + f"{'segment':<{width}}  {'customers':>9}" + "".join(f"  {c:>8}" for c in channels))
    for seg, n in s["segments"].items():
        per = s["segment_channel"].get(seg, {})
        lines.append("  " + f"{seg:<{width}}  {n:>9,}" + "".join(f"  {per.get(c, 0):>8,}" for c in channels))
    lines += ["  " + line for line in outcome_lines(s)]
    lines += ["  " + line for line in preview_lines(s.get("previews", []))]
    return mask_secrets_in("\n".join(lines))


def preview_lines(previews: list[dict]) -> list[str]:
    """A dry run's rendered messages, masked as `lifecycle plan` masks its samples (flows/preview.py):
    the customer shown as C00****42, their id and first name masked in the subject and body.

    A preview that does not say whose it is cannot be masked, so its text is not shown at all.
    """
    lines = []
    for p in previews[:PREVIEWS]:
        where = f"preview {p['segment']}/tier {p['tier'] + 1}"
        if "customer_id" not in p or "first_name" not in p:
            lines.append(f"{where}: (text not shown: the preview does not say whose it is, so it cannot be masked)")
            continue
        cid, name = p["customer_id"], p["first_name"]
        subject = mask_person(p.get("subject"), cid, name)
        body = mask_person(str(p.get("body") or ""), cid, name) or ""
        lines.append(f"{where} {mask_id(cid)}: {f'[{subject}] ' if subject else ''}{clipped(body, PREVIEW_CHARS)!r}")
    return lines


def outcome_lines(s: dict) -> list[str]:
    """What a run did, a line each: shared by the terminal summary and the flow run's markdown artifact."""
    dry = s["dry_run"]  # a dry run decides and renders, and sends, defers and commits nothing: it says "would"
    lines = [f"warning: {s['model_warning']}"] if s.get("model_warning") else []
    lines.append(f"{'would send' if dry else 'touches sent'}: {format_counts(s['touches'])}")
    if s.get("already_sent"):
        lines.append(f"already sent earlier for this date (not repeated): {s['already_sent']:,}")
    lines.append(f"{'would not touch' if dry else 'not touched'}: {format_counts(s['dropped'])}")
    # a consent no customer of a tier's segments holds (tasks/allocate.py consent_gaps): why they all dropped
    lines += [f"warning: {gap['message']}" for gap in s.get("consent_gaps") or ()]
    if s.get("deferred"):
        lines.append(f"would defer until quiet hours end: {s['deferred']:,}" if dry else
                     f"deferred until quiet hours end: {s['deferred']:,} (sent by the next run or `lifecycle deliver`)")
    if s.get("deferred_sent") or s.get("deferred_dropped"):
        lines.append(f"earlier deferred touches now sent: {format_counts(s.get('deferred_sent', {}))}; "
                     f"dropped: {format_counts(s.get('deferred_dropped', {}))}")
    if s.get("failed"):
        lines.append(f"failed (dead letters, by provider reason; see the ledger): {format_counts(s['failed'])}")
    if s.get("bad_rows"):
        lines.append(f"left out, rows no step can hold (the log names their keys): {format_counts(s['bad_rows'])}")
    if s.get("retried"):
        lines.append(f"provider calls retried: {s['retried']:,}")
    if s.get("taken_over"):
        lines.append(f"taken over from a run that is gone (killed or crashed): {s['taken_over']:,} "
                     "(any it had already handed to the provider may arrive twice, with the same touch key)")
    if s.get("claimed_elsewhere"):
        holders = ", ".join(f"{who} ({n:,})" for who, n in sorted((s.get("holders") or {}).items()))
        lines.append(f"held by another run that may still be delivering them: {s['claimed_elsewhere']:,}"
                     f"{' (' + holders + ')' if holders else ''}; once it is gone (or its claims' lease has "
                     "run out) a rerun of the same playbook and as-of date delivers what it left")
    if s.get("offer_cost"):
        cost = f"{s['offer_cost']:,.2f} {s.get('currency') or ''}".rstrip()
        lines.append(f"offers it would commit: {cost} (coupon unit cost of the touches it would send)" if dry else
                     f"offers committed: {cost} (coupon unit cost of the touches planned)")
    if s.get("triggered_by") is not None and s.get("window"):
        lines.append(f"triggered: {counted(s['triggered_by'], 'customer')} with the event in "
                     f"{s['window'][0]} .. {s['window'][1]}")
    if s.get("not_reentered"):
        lines.append(f"kept out by the re-entry rule: {s['not_reentered']:,}")
    steps = s.get("follow_ups") or {}
    if steps.get("converted"):
        lines.append(f"journeys ended by the goal: {steps['converted']:,}")
    for name, c in (steps.get("steps") or {}).items():
        lines.append(f"follow-up {name}: {c['due']:,} due, {c['selected']:,} selected by its rule, "
                     f"{'would send' if dry else 'sent'} {format_counts(c['sent'])}; "
                     f"{'would not touch' if dry else 'not touched'} {format_counts(c['dropped'])}"
                     + (f"; {'would defer' if dry else 'deferred'} {c['deferred']:,}" if c.get("deferred") else ""))
    for ch, where in sorted(s["outboxes"].items()):
        lines.append(f"outbox {ch}: {where}")
    if s.get("failed_steps"):
        skipped = f"; skipped because of it: {', '.join(s['skipped_steps'])}" if s.get("skipped_steps") else ""
        lines.append("FAILED: " + "; ".join(f"{k}: {v}" for k, v in s["failed_steps"].items()) + skipped
                     + " (rerun the same playbook and as-of date to resume; nothing sent is repeated)")
    # a webhook's https://user:pw@... location, a failure quoting a URL: never shown with the secret
    return [mask_secrets_in(line).replace("\n", " ") for line in lines]


def format_counts(counts: dict[str, int]) -> str:
    """`sms 120, push 3`; keys (channels, drop reasons, provider reasons) shown on one line, masked."""
    return ", ".join(f"{' '.join(mask_secrets_in(str(k)).split())} {n:,}" for k, n in sorted(counts.items())) or "none"
