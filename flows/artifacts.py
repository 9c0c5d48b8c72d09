"""The tables and texts the flows attach to their runs, shaped for a person reading the Prefect UI (pure).

The UI draws a table artifact's columns from its first row's keys, so a key the first row lacks is a
column nobody sees: every table here has the same keys in every row (`uniform`). Cells are text as the
run summary prints them: counts with thousands separators, rates as percentages, money with its
currency, and "—" where there is nothing to show. Counts only: never a customer.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flows.summary import format_counts

NONE = "—"  # the UI renders a cell as markdown: a lone "-" would be a list bullet
_TIER = re.compile(r"^tier (\d+) (.+)$")  # tasks/dispatch.py's segment_tier keys: "tier 1 sms"


def uniform(rows: Iterable[Mapping[str, Any]], fill: str = NONE) -> list[dict[str, Any]]:
    """The rows with one set of keys (every key any row has, in the order first seen), `fill` where missing."""
    rows = list(rows)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return [{k: row[k] if k in row and row[k] is not None else fill for k in keys} for row in rows]


def count(n: Any) -> str:
    return NONE if n is None else f"{int(n):,}"


def pct(rate: Any, digits: int = 1) -> str:
    return NONE if rate is None else f"{float(rate):.{digits}%}"


def money(value: Any, currency: str | None = None, *, signed: bool = False) -> str:
    if value is None:
        return NONE
    text = f"{float(value):+,.2f}" if signed else f"{float(value):,.2f}"
    return f"{text} {currency}" if currency else text


def segment_rows(segments: Mapping[str, int], segment_tier: Mapping[str, Mapping[str, int]]) -> list[dict[str, str]]:
    """Customers per segment and tier, one row per (segment, tier), then the segment's customers no tier
    reached: the rows of a segment add up to its customers. Segments in the playbook's order, tiers by number."""
    rows = []
    for seg, n in segments.items():
        tiers = []
        for key, touched in (segment_tier.get(seg) or {}).items():
            m = _TIER.match(str(key))
            tiers.append(((int(m.group(1)), m.group(2)) if m else (0, str(key)), int(touched)))
        tiers.sort()
        for (tier, channel), touched in tiers:
            rows.append({"segment": seg, "tier": str(tier) if tier else NONE, "channel": channel,
                         "customers": count(touched), "of segment": pct(touched / n) if n else NONE})
        rest = int(n) - sum(t for _, t in tiers)
        if rest > 0 or not tiers:
            rows.append({"segment": seg, "tier": NONE,
                         "channel": "not touched (see the drops table)" if n else "nobody in this segment",
                         "customers": count(max(rest, 0)), "of segment": pct(rest / n) if n else NONE})
    return uniform(rows)


def drop_rows(dropped: Mapping[str, int], meaning: Callable[[str], str | None]) -> list[dict[str, str]]:
    """Customers not touched, by reason (most first), with what the reason means."""
    rows = [{"reason": r, "customers": count(n), "what it means": meaning(r)}
            for r, n in sorted(dropped.items(), key=lambda x: (-x[1], x[0]))]
    return uniform(rows or [{"reason": "none", "customers": "0",
                             "what it means": "every customer decided today was touched"}])


EFFECT_KEYS = {"group", "by", "treated", "sent", "treated_rate", "control", "control_rate", "lift_pts", "low_pts",
               "high_pts", "revenue_lift", "comparison"}


def effect_table(table: Iterable[Mapping[str, Any]], currency: str | None,
                 confidence: float = 0.95) -> tuple[list[dict[str, str]], str]:
    """tasks/measure.py's group rows (fractions, points, bare numbers) as cells a person reads, and the
    table's description; keys it does not know are kept, as they are. When every group was compared
    the same way (randomised), the description says so instead of a column repeating it."""
    table = list(table)
    ci = f"lift, pts ({int(round(confidence * 100))}% CI)"
    how = {g.get("comparison") or "no holdout, so no lift" for g in table}
    rows = []
    for g in table:
        held = g.get("control")
        lifted = g.get("lift_pts") is not None
        rows.append({
            "group": g.get("group"),  # its label says what it is: all, a segment, "segment / tier 1 sms", a variant
            "treated / held out": f"{count(g.get('treated'))} / {count(held)}",
            "sent": count(g.get("sent")),
            "converted": (f"{pct(g.get('treated_rate'))} vs {pct(g.get('control_rate'))}" if held is not None
                          else pct(g.get("treated_rate"))),
            ci: (f"{g['lift_pts']:+.1f} ({g.get('low_pts', 0):+.1f} to {g.get('high_pts', 0):+.1f})"
                 if lifted else NONE),
            "revenue lift": money(g.get("revenue_lift"), currency, signed=True) if lifted else NONE,
            **({"comparison": g.get("comparison") or "no holdout, so no lift"} if len(how) > 1 else {}),
            **{k: v for k, v in g.items() if k not in EFFECT_KEYS},
        })
    compared = f" ({how.pop()})" if len(how) == 1 else ""
    return uniform(rows), (f"measured effect of recent runs: treated vs held out{compared}, with intervals; "
                          "revenue lift: revenue per customer, treated minus held out")


# why a deferred touch was dropped when it came due (tasks/deferred.py checks them again then)
DEFERRED_DROPPED = {
    "expired": "its window after the quiet hours passed before it could go out",
    "no_consent": "consent for its channel was withdrawn while it waited",
    "suppressed": "put on the suppression list while it waited",
    "frequency_cap": "touches sent while it waited reached the frequency cap",
    "no_message": "its message, rendered when it was decided, could not be read",
}


def deliver_markdown(title: str, sent: Mapping[str, int], dropped: Mapping[str, int], failed: Mapping[str, int],
                     retried: int) -> str:
    """The deliver-due run's page: what went out, and why the rest did not."""
    lines = [f"# {title}", "", f"- sent: {format_counts(sent)}", f"- dropped: {format_counts(dropped)}"]
    lines += [f"  - {r}: {DEFERRED_DROPPED[r]}" for r in sorted(dropped) if r in DEFERRED_DROPPED]
    lines += [f"- failed (dead letters, by provider reason; see the ledger): {format_counts(failed)}"]
    if retried:
        lines.append(f"- provider calls retried: {retried:,}")
    return "\n".join(lines)


def _n(n: int, thing: str) -> str:
    return f"{n:,} {thing}{'' if n == 1 else 's'}"


def _window(start: str, end: str) -> str:
    """A relay window (naive-UTC ISO times, start excluded) to the second, the end's date only when it differs."""
    a, b = dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)
    return f"after {a:%Y-%m-%d %H:%M:%S}, up to {b:{'%H:%M:%S' if a.date() == b.date() else '%Y-%m-%d %H:%M:%S'}} UTC"


def relay_markdown(mode: str, triggered: Iterable[str], windows: Mapping[str, Mapping[str, Any]],
                   runs: Iterable[Mapping[str, Any]], broken: Iterable[str]) -> str:
    """The event relay's page: the windows it handed on and what became of them."""
    how = ("emit: one Prefect event per window, the playbooks' deployment triggers start the runs" if mode == "emit"
           else "run: the triggered playbooks ran in the relay's process")
    lines = ["# Event relay", "", f"- mode {how}", f"- playbooks with triggers: {', '.join(sorted(triggered)) or 'none'}"]
    lines += [f"- {t}: {_n(int(w['events']), 'event')} {_window(w['window_start'], w['window_end'])}"
              for t, w in windows.items()]
    lines += [f"- ran {r['playbook']} for {_n(int(r['triggered_by']), 'customer')}: touches {format_counts(r['touches'])}"
              for r in runs]
    lines += [f"- skipped, does not compile: {b}" for b in broken]
    return "\n".join(lines)
