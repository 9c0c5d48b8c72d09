"""`lifecycle report PLAYBOOK`: what a playbook caused, treated against its holdout, as a table, JSON or HTML.

The numbers come from tasks/measure.py (see its docstring for how the arms, the touch time, the
conversions and the costs are defined); this module only lays them out. The HTML page is
self-contained (the chart of cumulative conversion by days since the touch is embedded) and the
chart is also written as a PNG beside it.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path

from infra.settings import lifecycle_home
from infra.wording import counted

CHART = "cumulative_conversion.png"


def add_arguments(sub, common: argparse.ArgumentParser, date_type) -> None:
    """Register `lifecycle report` on the top-level subparsers."""
    rep = sub.add_parser("report", parents=[common], help="measured effect of a playbook: lift against its holdout, "
                         "incremental revenue, cost and ROI")
    rep.add_argument("playbook", help="path to a playbook YAML file (or the name of a shipped playbook)")
    rep.add_argument("--from", dest="date_from", type=date_type, metavar="DATE",
                     help="first as-of day to include (default: the playbook's first run)")
    rep.add_argument("--to", dest="date_to", type=date_type, metavar="DATE",
                     help="last as-of day to include (default: the last run whose attribution window has ended)")
    rep.add_argument("--format", choices=["table", "json", "html"], default="table")
    rep.add_argument("--out", metavar="DIR", help="folder for report.html / report.json and the PNG chart "
                     "(html default: $LIFECYCLE_HOME/reports/PLAYBOOK)")


def report(args: argparse.Namespace) -> int:
    from flows.commands import _context, resolve_playbook
    from flows.compiler import compile_file
    from infra.settings import load_config
    from tasks import measure

    plan = compile_file(resolve_playbook(args.playbook), load_config(args.config))
    config, _, engine = _context(args)
    m = measure.measure_playbook(engine, plan, args.date_from, args.date_to, fees=measure.fees_of(config),
                                 currency=config.defaults.currency)
    targeting = uplift_evaluation(engine, plan.name)
    if args.format == "json":
        data = {**m.to_json(), "uplift_targeting": targeting.to_json() if targeting else None}
        text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False, default=str)
        if args.out:
            path = _folder(args.out) / "report.json"
            path.write_text(text + "\n", encoding="utf-8")
            print(f"wrote {path}", file=sys.stderr)
        else:
            print(text)
    elif args.format == "html":
        paths = write_html(m, _folder(args.out or lifecycle_home() / "reports" / plan.name), targeting)
        print(f"report: {paths['html']} (chart also as {paths['chart']})")
    else:
        print(format_table(m))
        print("\n".join(targeting_lines(targeting)))
    return 0


def uplift_evaluation(engine, playbook: str):
    """How uplift targeting compared with risk targeting on held-out customers (`lifecycle uplift`), if trained."""
    from models.uplift import Evaluation
    from tasks.uplift import latest

    model = latest(engine, playbook)
    evaluation = model.meta.get("evaluation") if model is not None else None
    return Evaluation.from_json(evaluation) if evaluation else None


def targeting_lines(ev) -> list[str]:
    if ev is None:
        return ["", "Uplift vs risk targeting: no uplift model yet (`lifecycle uplift PLAYBOOK` trains one from "
                    "the randomised history of this playbook's holdouts)."]
    return ["", "Uplift vs risk targeting, at the same budget:", *("  " + line for line in ev.lines())]


def _folder(path) -> Path:
    folder = Path(path).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ---- text ------------------------------------------------------------------------------------

def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _ci(lift, scale: float = 100, digits: int = 1, kind: str = "rate") -> str:
    if lift is None:
        return "-"
    d, lo, hi = ((lift.rate_diff, lift.rate_low, lift.rate_high) if kind == "rate"
                 else (lift.revenue_diff, lift.revenue_low, lift.revenue_high))
    return f"{d * scale:+.{digits}f} ({lo * scale:+.{digits}f} to {hi * scale:+.{digits}f})"


def title(m) -> str:
    return (f"{m.playbook} v{m.version}: as-of {m.date_from} to {m.date_to}; goal {m.goal_event} within "
            f"{m.window_days} days; holdout {m.holdout_percent:g}%; money in {m.currency}")


RUNS_LISTED = 7  # more as-of days than this are summed up in the text, listed in JSON and HTML


def runs_lines(m) -> list[str]:
    """Which runs the range merged, what each decided, and how a customer decided on several days counts."""
    runs = m.runs
    if not runs:
        return []
    if len(runs) == 1:
        return [f"one run: as of {runs[0]['as_of']}, {_run_counts(runs[0])}"]
    if len(runs) <= RUNS_LISTED:
        lines = [f"{counted(len(runs), 'run')} merged:"] + [f"  as of {r['as_of']}: {_run_counts(r)}" for r in runs]
    else:
        lines = [f"{counted(len(runs), 'run')} merged, as of {runs[0]['as_of']} to {runs[-1]['as_of']} "
                 "(each run: --format json or html)"]
    again = sum(r["counted_earlier"] for r in runs)
    lines.append("a customer decided on several days counts once, in the arm, segment and window of the first"
                 + (f" ({counted(again, 'decision')} of later runs counted so; a later touch inside that window is "
                    f"part of what is measured: `lifecycle report {m.playbook} --from DAY --to DAY` measures one run "
                    "alone)" if again else ""))
    return lines


def _run_counts(r: dict) -> str:
    earlier = f"; {r['counted_earlier']:,} of them counted from an earlier day" if r["counted_earlier"] else ""
    return (f"{counted(r['customers'], 'customer')} decided ({r['treated']:,} treated, {r['held_out']:,} held out"
            f"{earlier})")


def format_table(m) -> str:
    """The report for a terminal: headline, the runs merged, one line per group, variant tests, money, notes."""
    from tasks.measure import SEGMENT_CONTROL, headline, money, roi_text

    pct = int(round(m.confidence * 100))
    lines = [title(m), "  " + headline(m), ""]
    groups = [m.overall, *m.segments, *m.tiers, *m.variants]
    width = max(len(g.label) for g in groups) + 2
    lines += ["  " + line for line in runs_lines(m)] + [""]
    lines.append("  " + f"{'group':<{width}}{'treated':>8}{'sent':>8}{'conv':>7}{'rev/cust':>10}"
                 f"{'control':>9}{'conv':>7}{'rev/cust':>10}   {'lift pts (' + str(pct) + '% CI)':<24}"
                 f"{'revenue lift/cust (' + str(pct) + '% CI)'}")
    for g in groups:
        c = g.control
        mark = " *" if g.comparison == SEGMENT_CONTROL else ""
        lines.append("  " + f"{g.label:<{width}}{g.treated.n:>8,}{g.sent:>8,}{_pct(g.treated.rate):>7}"
                     f"{_num(g.treated.revenue_per_customer):>10}{(f'{c.n:,}' if c else '-'):>9}"
                     f"{_pct(c.rate if c else None):>7}{_num(c.revenue_per_customer if c else None):>10}   "
                     f"{_ci(g.lift) + mark:<24}{_ci(g.lift, 1, 1, 'revenue')}")
    if m.variant_tests:
        lines += ["", "  variants against each other (randomised within the tier):"]
        for t in m.variant_tests:
            lines.append(f"    {t.segment} / tier {t.tier + 1}: {t.b} vs {t.a}: conversion {_ci(t.lift)} pts, "
                         f"revenue per customer {_ci(t.lift, 1, 1, 'revenue')} {m.currency}")
    cur = m.currency
    lines.append("")
    if m.overall.lift is not None:
        lift = m.overall.lift
        lines.append(f"  incremental: {counted(round(lift.incremental_conversions), 'conversion')}, "
                     f"{money(lift.incremental_revenue, cur)} revenue")
    fees = ", ".join(f"{ch} {n:,}" for ch, n in m.costs.messages.items()) or "none"
    lines.append(f"  cost: {money(m.costs.total, cur)} = messages {money(m.costs.message_cost, cur)} (sent: {fees})"
                 f" + coupons {money(m.costs.coupon_cost, cur)} ({m.costs.coupons:,} redeemed)")
    if m.roi is not None or m.roi_note:
        lines.append(f"  {roi_text(m)}")
    if m.global_control:
        lines.append(f"  global control group: {counted(m.global_control, 'customer')} held out of all marketing "
                     "(not in either arm)")
    if any(g.comparison == SEGMENT_CONTROL for g in groups):
        lines.append("  * tiers and variants are chosen after the holdout draw: compared with the segment's whole "
                     "control, so read these with care")
    lines += [f"  note: {n}" for n in m.notes]
    return "\n".join(lines)


# ---- HTML and the chart ------------------------------------------------------------------------

def write_chart(m, path: Path) -> Path:
    """Cumulative conversion by days since the touch, treated vs control."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    days = m.curve["days"]
    for arm, color, label in (("treated", "#1b6ca8", "treated"), ("control", "#999999", "control (holdout)")):
        values = m.curve.get(arm)
        if values and values[0] is not None:
            ax.plot(days, [v * 100 for v in values], "o-", markersize=3, color=color, label=label)
    ax.set(xlabel="days since the touch", ylabel=f"% converted ({m.goal_event})", xlim=(0, m.window_days),
           title=f"{m.playbook}: cumulative conversion, as-of {m.date_from} to {m.date_to}")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_html(m, folder: Path, targeting=None) -> dict[str, Path]:
    """report.html (charts embedded) and the charts as PNG in `folder`."""
    from models.report import embed_png
    from models.uplift import chart as uplift_chart

    chart = write_chart(m, folder / CHART)
    extra = ""
    if targeting is not None:
        png = uplift_chart(targeting, folder / "uplift_vs_risk.png", f"{m.playbook}: uplift vs risk targeting")
        extra = ("<h2>Uplift vs risk targeting, at the same budget</h2>"
                 + embed_png(png, "incremental conversions by share targeted")
                 + "<pre>" + html.escape("\n".join(targeting.lines())) + "</pre>")
    path = folder / "report.html"
    path.write_text(_html(m, embed_png(chart, "cumulative conversion by days since the touch"), extra),
                    encoding="utf-8")
    return {"html": path, "chart": chart}


def _html(m, chart: str, extra: str = "") -> str:
    from models.report import html_page
    from tasks.measure import SEGMENT_CONTROL, headline, money

    e = html.escape
    pct = int(round(m.confidence * 100))
    cur = m.currency
    head = (f"<tr><th>group</th><th>treated</th><th>sent</th><th>conversion</th><th>revenue / customer ({e(cur)})</th>"
            f"<th>control</th><th>conversion</th><th>revenue / customer ({e(cur)})</th><th>lift, pts ({pct}% CI)</th>"
            f"<th>relative</th><th>revenue lift / customer, {e(cur)} ({pct}% CI)</th><th>compared with</th></tr>")
    rows = []
    for g in [m.overall, *m.segments, *m.tiers, *m.variants]:
        c = g.control
        rel = f"{g.lift.relative:+.0%}" if g.lift and g.lift.relative is not None else "-"
        rows.append(f"<tr><td>{e(g.label)}</td><td>{g.treated.n:,}</td><td>{g.sent:,}</td><td>{_pct(g.treated.rate)}</td>"
                    f"<td>{_num(g.treated.revenue_per_customer)}</td><td>{f'{c.n:,}' if c else '-'}</td>"
                    f"<td>{_pct(c.rate if c else None)}</td><td>{_num(c.revenue_per_customer if c else None)}</td>"
                    f"<td>{_ci(g.lift)}</td><td>{rel}</td><td>{_ci(g.lift, 1, 1, 'revenue')}</td>"
                    f"<td>{e(g.comparison or '-')}</td></tr>")
    tests = "".join(f"<li>{e(t.segment)} / tier {t.tier + 1}: <b>{e(t.b)}</b> vs <b>{e(t.a)}</b>: conversion "
                    f"{_ci(t.lift)} pts, revenue per customer {_ci(t.lift, 1, 1, 'revenue')} {e(cur)}</li>"
                    for t in m.variant_tests)
    money_lines = []
    if m.overall.lift is not None:
        lift = m.overall.lift
        money_lines.append(f"incremental: {counted(round(lift.incremental_conversions), 'conversion')}, "
                           f"{e(money(lift.incremental_revenue, cur))} revenue")
    money_lines.append(f"cost: {e(money(m.costs.total, cur))} = messages {e(money(m.costs.message_cost, cur))} + "
                       f"coupons {e(money(m.costs.coupon_cost, cur))} ({m.costs.coupons:,} redeemed)")
    if m.roi is not None:
        money_lines.append(f"ROI: <b>{m.roi:+.2f}</b> (net {e(money(m.net, cur))})")
    elif m.roi_note:
        money_lines.append(f"ROI: <b>n/a</b>: {e(m.roi_note)} (net {e(money(m.net, cur))})")
    notes = [*m.notes]
    if any(g.comparison == SEGMENT_CONTROL for g in m.tiers + m.variants):
        notes.append("tiers and variants are chosen after the holdout draw: they are compared with their segment's "
                     "whole control, so read them with care")
    body = f"""<p>{e(title(m))}</p>
<p><b>{e(headline(m))}</b></p>
<ul>{''.join(f'<li>{x}</li>' for x in money_lines)}</ul>
{_runs_html(m)}
<h2>Cumulative conversion by days since the touch</h2>
<div class="chart">{chart}</div>
<h2>Treated against control</h2>
<table>{head}{''.join(rows)}</table>
{'<h2>Variants against each other</h2><ul>' + tests + '</ul>' if tests else ''}
{extra}
{'<h2>Notes</h2><ul>' + ''.join(f'<li>{e(n)}</li>' for n in notes) + '</ul>' if notes else ''}
<p>Intent to treat: the treated arm is every customer the playbook selected and did not hold out, reached or
not; the touch time is the run's scheduled send time for both arms. Conversion: {e(m.goal_event)} within
{m.window_days} days of it. Lift: Newcombe's hybrid score interval for the difference of rates; revenue: a
seeded bootstrap. Regenerate with <code>lifecycle report {e(m.playbook)} --format html</code>.</p>"""
    return html_page(f"What {m.playbook} caused", body, ".chart img{max-width:100%}td{white-space:nowrap}")


def _runs_html(m) -> str:
    """The as-of days the range merged, one row each."""
    if len(m.runs) < 2:
        return f"<p>{html.escape(runs_lines(m)[0])}</p>" if m.runs else ""
    rows = "".join(f"<tr><td>{r['as_of']}</td><td>{r['customers']:,}</td><td>{r['treated']:,}</td>"
                   f"<td>{r['held_out']:,}</td><td>{r['counted_earlier']:,}</td></tr>" for r in m.runs)
    return ("<h2>Runs merged</h2><p>A customer decided on several days counts once, in the arm, segment and window "
            "of the first.</p><table><tr><th>as of</th><th>customers decided</th><th>treated</th>"
            f"<th>held out</th><th>counted from an earlier day</th></tr>{rows}</table>")


# ---- the demo ----------------------------------------------------------------------------------

DEMO_RESPONSE_DAYS = 30  # `lifecycle demo` runs the playbooks this long before the data ends


def demo_measure(engine, config, plans: list, as_of, seed: int, *, until) -> list[str]:
    """`lifecycle demo`'s last part: the world answers the touches of `as_of`, then what each playbook caused."""
    import time

    import pandas as pd

    from infra import demoresponse
    from infra.errors import UsageError
    from tasks import measure

    if not demoresponse.is_demo_world(engine):
        return ["responses: not simulated (this warehouse was not generated by the demo); "
                "measure real outcomes with `lifecycle report PLAYBOOK`"]
    started = time.perf_counter()
    parts = [measure.assignments(engine, p, as_of, as_of) for p in plans]
    touched = pd.concat([p for p in parts if not p.empty], ignore_index=True) if any(
        not p.empty for p in parts) else parts[0]
    response = demoresponse.respond(engine, touched, seed=seed, until=until)
    if response.applied:
        lines = [f"responses: over the {DEMO_RESPONSE_DAYS} days after {as_of}, the touches persuaded "
                 f"{counted(len(response.added), 'order')} and put off {len(response.removed):,} (simulated; "
                 f"{time.perf_counter() - started:.1f} s)"]
    else:
        lines = [f"responses: already simulated for the touches of {as_of}"]
    measurements, truth = [], {}
    for plan in plans:
        if plan.goal is None:
            continue
        try:
            m = measure.measure_playbook(engine, plan, as_of, as_of, fees=measure.fees_of(config), n_boot=1000,
                                         currency=config.defaults.currency)
        except UsageError:  # the playbook selected nobody that day
            continue
        measurements.append(m)
        if response.applied and plan.goal.event == "order.placed" and m.overall.lift is not None:
            truth[plan.name] = float(response.true_lift(plan.name).loc["all", "rate_diff"])
    lines += ["", f"What the playbooks caused ({int(round(100 * measure.CONFIDENCE))}% intervals; "
                  "`lifecycle report NAME --format html` for the full report):"]
    lines += ["  " + line for line in demo_lines(measurements, truth)]
    return lines

def demo_lines(measurements: list, truth: dict[str, float] | None = None) -> list[str]:
    """A few lines per playbook for `lifecycle demo`: lift with its interval, money, and the simulated truth."""
    from tasks.measure import headline, money

    lines = []
    for m in measurements:
        lines.append(f"{m.playbook}: {headline(m)}")
        if m.overall.lift is not None:
            true = (truth or {}).get(m.playbook)
            extra = f"; simulated true effect {true * 100:+.1f} pts" if true is not None else ""
            roi = f", ROI {m.roi:+.2f}" if m.roi is not None else (f", ROI n/a ({m.roi_note})" if m.roi_note else "")
            lines.append(f"  incremental revenue {money(m.overall.lift.incremental_revenue, m.currency)}, "
                         f"cost {money(m.costs.total, m.currency)}{roi}{extra}")
    return lines
