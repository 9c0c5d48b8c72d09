"""`lifecycle kpis`: the KPIs ops track (tasks/kpis.py computes them), as a table, JSON or a one-page HTML.

Every run writes kpis.json, two charts (monthly.png, cohorts.png) and kpis.html (charts embedded) to
--out (default $LIFECYCLE_HOME/reports/kpis); the KPI flow (flows/kpiflow.py) attaches the same charts
and tables to its Prefect run. Only counts and rates: no customer appears in any output.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # tasks.kpis imports Prefect; argument parsing must not pay for that
    from tasks.kpis import Kpis

RETENTION_COLUMNS = 12  # months after the first order shown in tables (the chart shows them all)
COHORT_FLAGS = ["days", "days_in_month", "complete", "age_days", "settled"]


def _maturing() -> str:
    from tasks.kpis import COHORT_SETTLED_DAYS

    return (f"A cohort marked maturing signed up in a month that ended under {COHORT_SETTLED_DAYS} days before the "
            "period's end: its rates so far are not comparable with older cohorts' (fewer of its customers have had "
            "time to order again, and its 30-day rate counts only its quickest first buyers); the charts draw it "
            "apart.")


def add_arguments(sub, common: argparse.ArgumentParser, date_type) -> None:
    p = sub.add_parser("kpis", parents=[common], help="active customers, repurchase, AOV, funnel and retention "
                       "by monthly cohort, with charts")
    p.add_argument("--from", dest="start", type=date_type, metavar="DATE",
                   help="first month (its first day counts; default: 12 months up to --to)")
    p.add_argument("--to", dest="end", type=date_type, metavar="DATE",
                   help="last day counted (default: the day of the last order)")
    p.add_argument("--format", choices=["table", "json", "html"], default="table",
                   help="what to print: a table, JSON, or the path of the HTML report (always written)")
    p.add_argument("--out", metavar="DIR", help="where kpis.json, the PNG charts and kpis.html go "
                   "(default: $LIFECYCLE_HOME/reports/kpis)")


def kpis(args: argparse.Namespace) -> int:
    from flows.commands import _context
    from infra.settings import lifecycle_home
    from infra.warehouse.db import require_customers
    from tasks.kpis import compute

    _, _, engine = _context(args)
    require_customers(engine)
    result = compute(engine, args.start, args.end)
    paths = write_report(result, Path(args.out) if args.out else lifecycle_home() / "reports" / "kpis")
    if args.format == "json":
        print(json.dumps(result.to_json(), indent=1))
    elif args.format == "html":
        print(paths["html"])
        return 0
    else:
        print(format_table(result))
    print(f"report: {paths['html']} (charts: {paths['monthly']}, {paths['cohorts']})", file=sys.stderr)
    return 0


# ---- text --------------------------------------------------------------------------------------

def _pct(v: Any) -> str:
    return "-" if v is None or pd.isna(v) else f"{v:.1%}"


def _money(v: Any) -> str:
    return "-" if v is None or pd.isna(v) else f"{v:,.2f}"


def headline(k: Kpis) -> list[str]:
    """The period in a few sentences: funnel, repurchase, AOV and activity, and the month it cuts short."""
    from tasks.kpis import REPURCHASE_DEFINITION

    t = k.totals
    lines = [
        f"KPIs {k.start} to {k.end} (calendar months, UTC)",
        f"cohorts signed up in the period: {t['signed_up']:,} signed up -> {t['first_order']:,} first order "
        f"({_pct(t['first_order_rate'])}) -> {t['second_order']:,} second ({_pct(t['repeat_rate'])}) -> "
        f"{t['third_plus']:,} third or later",
        f"30-day repurchase rate: {_pct(t['repurchase_30d_rate'])} ({REPURCHASE_DEFINITION}); average order value "
        f"{_money(t['aov'])} over {t['orders']:,} orders",
        f"active customers (an order in the 90 days up to {k.end}): {t['active_90d_latest']:,}",
    ]
    if k.partial:
        lines.append(f"{k.partial} is partial: the period ends on {k.end}, so its monthly counts are not comparable "
                     "with whole months; it is marked in the tables, drawn apart in the charts (hatched, hollow, "
                     "dashed) and left out of retention")
    return lines


def _labelled(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """The frame for display: a partial month's label says how much of it is seen; the period columns go."""
    from tasks.kpis import PERIOD_COLUMNS, partial_label

    out = frame.copy()
    out[key] = [partial_label(row, key) for row in frame.to_dict("records")]
    return out.drop(columns=[c for c in (*PERIOD_COLUMNS, "age_days", "settled") if c in out.columns])


def _monthly_view(k: Kpis) -> pd.DataFrame:
    return _labelled(k.monthly if k.has_events else k.monthly.drop(columns="engaged"), "month")


def _frame_text(frame: pd.DataFrame, formats: dict[str, Any]) -> list[str]:
    cells = [[str(c).replace("_", " ") for c in frame.columns]]
    for row in frame.itertuples(index=False):
        cells.append([formats.get(c, lambda v: f"{v:,}" if isinstance(v, (int,)) else str(v))(v)
                      for c, v in zip(frame.columns, row)])
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return ["  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in cells]


def _retention_view(k: Kpis) -> pd.DataFrame:
    shown = [c for c in k.retention.columns if 1 <= int(c) <= RETENTION_COLUMNS]
    view = k.retention[shown].copy()
    view.columns = [f"m{c}" for c in shown]
    return view.reset_index()


def format_table(k: Kpis) -> str:
    from tasks.kpis import REPURCHASE_DEFINITION

    monthly = _monthly_view(k)
    count = lambda v: f"{int(v):,}"  # noqa: E731
    lines = headline(k) + ["", "by month (active: an order in the 90 days up to the month's end)"]
    lines += _frame_text(monthly, {"revenue": _money, "aov": _money, **{c: count for c in
                                   ("signups", "new_buyers", "buyers", "orders", "active_90d", "engaged")}})
    cohort_cols = ["cohort", "signed_up", "first_order", "second_order", "third_plus", "first_order_rate",
                   "repeat_rate", "third_plus_rate", "repurchase_30d_rate", "aov"]
    lines += ["", f"by sign-up cohort (rates: signed up -> first order -> second -> third+; 30d: "
                  f"{REPURCHASE_DEFINITION})", f"  {_maturing()}"]
    lines += _frame_text(_labelled(k.cohorts[cohort_cols + COHORT_FLAGS], "cohort"), {
        **{c: _pct for c in cohort_cols if c.endswith("_rate")}, "aov": _money,
        **{c: count for c in ("signed_up", "first_order", "second_order", "third_plus")}})
    view = _retention_view(k)
    if len(view.columns) > 1:
        lines += ["", "retention: share of a cohort's buyers ordering k months after their first-order month "
                      "(- = not seen whole yet)"]
        lines += _frame_text(view, {c: _pct for c in view.columns if c != "cohort"})
    return "\n".join(lines)


def markdown_table(frame: pd.DataFrame, formats: dict[str, Any] | None = None) -> str:
    """A frame as a GitHub-style markdown table (Prefect renders these in artifacts)."""
    formats = formats or {}
    head = "| " + " | ".join(str(c).replace("_", " ") for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(formats.get(c, str)(v) for c, v in zip(frame.columns, r)) + " |"
            for r in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def markdown(k: Kpis, paths: dict[str, Path] | None = None, *, images: bool = True) -> str:
    """The headline, the month and cohort tables and (inlined as data: URIs) the two charts."""
    from models.report import png_data_uri

    cohort_cols = ["cohort", "signed_up", "first_order", "second_order", "third_plus", "repeat_rate",
                   "repurchase_30d_rate", "aov", *COHORT_FLAGS]
    monthly = _monthly_view(k)
    parts = [f"# {headline(k)[0]}", "", *(f"- {line}" for line in headline(k)[1:]), ""]
    if images and paths:
        parts += [f"![active customers and order value by month]({png_data_uri(paths['monthly'])})", "",
                  f"![funnel and retention by sign-up cohort]({png_data_uri(paths['cohorts'])})", ""]
    parts += ["## By month", "", markdown_table(monthly, {"revenue": _money, "aov": _money}), "",
              "## By sign-up cohort", "",
              markdown_table(_labelled(k.cohorts[cohort_cols], "cohort"),
                             {"repeat_rate": _pct, "repurchase_30d_rate": _pct, "aov": _money})]
    if paths:
        parts += ["", f"Full report: `{paths['html']}`"]
    return "\n".join(parts)


# ---- files -------------------------------------------------------------------------------------

def write_report(k: Kpis, folder: Path | str) -> dict[str, Path]:
    """kpis.json, monthly.png, cohorts.png and kpis.html (charts embedded) in `folder`."""
    from models.report import embed_png, html_page
    from tasks.kpis import REPURCHASE_DEFINITION

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "kpis.json", "monthly": folder / "monthly.png", "cohorts": folder / "cohorts.png",
             "html": folder / "kpis.html"}
    paths["json"].write_text(json.dumps(k.to_json(), indent=1) + "\n")
    _monthly_chart(k, paths["monthly"])
    _cohort_chart(k, paths["cohorts"])
    monthly = _monthly_view(k)
    view = _retention_view(k)
    body = "".join([
        "<p>" + "<br>".join(html.escape(line) for line in headline(k)[1:]) + "</p>",
        f'<div class="charts">{embed_png(paths["monthly"], "by month")}{embed_png(paths["cohorts"], "by cohort")}</div>',
        "<h2>By month</h2><p>Active: an order in the 90 days up to the month's end. Engaged: any interaction "
        "in the month.</p>", _html_table(monthly, {"revenue": _money, "aov": _money}),
        "<h2>By sign-up cohort</h2><p>Rates: signed up &rarr; first order &rarr; second order &rarr; third or later; "
        f"30d: {html.escape(REPURCHASE_DEFINITION)}. {html.escape(_maturing())}</p>",
        _html_table(_labelled(k.cohorts, "cohort"), {**{c: _pct for c in k.cohorts.columns if c.endswith("_rate")},
                                                     "revenue": _money, "aov": _money}),
        "<h2>Retention</h2><p>Share of a cohort's buyers ordering k months after the month of their first order, "
        "among those whose month k is seen whole (a month the period cuts short counts for nobody).</p>",
        _html_table(view, {c: _pct for c in view.columns if c != "cohort"}),
    ])
    paths["html"].write_text(html_page(f"Customer KPIs {k.start} to {k.end}", body,
                                       style=".charts img{width:49%}"))
    return paths


def _html_table(frame: pd.DataFrame, formats: dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(str(c).replace('_', ' '))}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(formats.get(c, _cell)(v))}</td>"
                                    for c, v in zip(frame.columns, r)) + "</tr>" for r in frame.itertuples(index=False))
    return f"<table><tr>{head}</tr>{rows}</table>"


def _cell(v: Any) -> str:
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return "-"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _monthly_chart(k: Kpis, path: Path) -> None:
    _save(monthly_figure(k), path)


def _cohort_chart(k: Kpis, path: Path) -> None:
    _save(cohort_figure(k), path)


def _line(ax, x: np.ndarray, y: pd.Series, whole: np.ndarray, color: str, label: str, marker: str = "o",
          style: str = "-") -> None:
    """A line over the whole periods; a partial one hangs off it dashed, with a hollow marker."""
    values = pd.to_numeric(y, errors="coerce").to_numpy(dtype=float)
    ax.plot(x, np.where(whole, values, np.nan), marker=marker, linestyle=style, color=color, markersize=3, label=label)
    for i in np.flatnonzero(~whole):
        span = slice(max(i - 1, 0), i + 1)
        ax.plot(x[span], values[span], marker=marker, linestyle="--", color=color, markersize=4,
                markerfacecolor="white", markevery=[len(x[span]) - 1])


def _bars(ax, x: np.ndarray, y: pd.Series, whole: np.ndarray, color: str, label: str, alpha: float = 1.0) -> None:
    """Bars for the whole periods; a partial one hatched and pale."""
    values = pd.to_numeric(y, errors="coerce").to_numpy(dtype=float)
    ax.bar(x[whole], values[whole], color=color, alpha=alpha, label=label)
    if (~whole).any():
        ax.bar(x[~whole], values[~whole], color=color, alpha=alpha * 0.35, hatch="//", edgecolor=color)


def _ticks(ax, labels: pd.Series, frame: pd.DataFrame) -> None:
    shown = [str(lab) if ok else f"{lab} ({int(d)}/{int(n)} days)"
             for lab, ok, d, n in zip(labels, frame["complete"], frame["days"], frame["days_in_month"])]
    ax.set_xticks(list(range(len(shown))), shown, rotation=60, fontsize=7)


def _apart_note(ax, label: str | None, handles: list | None = None, loc: str = "upper left") -> None:
    """A legend entry saying what is drawn apart (dashed, hollow, hatched) and why, when something is."""
    from matplotlib.patches import Patch

    if label is None:
        return
    handles = handles if handles is not None else ax.get_legend_handles_labels()[0]
    handles = [*handles, Patch(facecolor="white", edgecolor="#666666", hatch="//", label=label)]
    ax.legend(handles=handles, fontsize=7, loc=loc)


def monthly_figure(k: Kpis):
    """Customers, orders and AOV by month; a partial month drawn apart (its in-month counts are not comparable)."""
    from models.report import plt

    m = k.monthly
    x = np.arange(len(m))
    whole = m["complete"].to_numpy(dtype=bool)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    # active: the 90 days up to the month's end (or the period's end): a whole window even in a partial month
    left.plot(x, m["active_90d"], "o-", color="#1b6ca8", markersize=3, label="active (ordered in last 90 days)")
    if k.has_events:
        _line(left, x, m["engaged"], whole, "#3a9d5d", "engaged (any interaction in the month)")
    _bars(left, x, m["new_buyers"], whole, "#e08a1e", "first order in the month", alpha=.6)
    left.set(title="Customers by month", ylabel="customers")
    left.legend(fontsize=7, loc="upper left")
    note = f"{k.partial}: partial, drawn apart" if k.partial else None
    _apart_note(left, note)
    _bars(right, x, m["orders"], whole, "#cccccc", "orders")
    right.set(title="Orders and average order value", ylabel="orders", ylim=(0, max(m["orders"].max(), 1) * 1.3))
    aov = right.twinx()
    _line(aov, x, m["aov"], whole, "#c0392b", "average order value")
    top = m["aov"].max(skipna=True) if m["aov"].notna().any() else 1.0
    aov.set(ylabel="average order value", ylim=(0, max(top, 1.0) * 1.4))
    handles = right.get_legend_handles_labels()[0] + aov.get_legend_handles_labels()[0]
    right.legend(handles=handles, fontsize=7, loc="upper left")
    _apart_note(right, note, handles)
    for ax in (left, right):
        _ticks(ax, m["month"], m)
    return fig


def cohort_figure(k: Kpis):
    """The funnel by sign-up cohort (a partial sign-up month drawn apart) and the retention triangle."""
    from models.report import plt

    c = k.cohorts
    x = np.arange(len(c))
    whole = c["settled"].to_numpy(dtype=bool)  # a partial sign-up month is never settled
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    signed = c["signed_up"].replace(0, float("nan"))
    for col, label, color in (("first_order", "first order", "#1b6ca8"), ("second_order", "second order", "#3a9d5d"),
                              ("third_plus", "third or later", "#e08a1e")):
        _line(left, x, c[col] / signed * 100, whole, color, f"{label} (% of sign-ups)")
    _line(left, x, c["repurchase_30d_rate"] * 100, whole, "#c0392b", "second order within 30 days (% of buyers)",
          marker="s", style="--")
    left.set(title="Funnel by sign-up cohort", ylabel="%", ylim=(0, 100))
    _ticks(left, c["cohort"], c)
    left.legend(fontsize=7, loc="lower left")
    from tasks.kpis import COHORT_SETTLED_DAYS

    _apart_note(left, None if whole.all() else f"dashed, hollow: maturing (its month ended under "
                f"{COHORT_SETTLED_DAYS} days ago)", loc="lower left")
    r = k.retention
    if r.empty:
        right.set_axis_off()
    else:
        shown = r[[col for col in r.columns if int(col) >= 1]] if len(r.columns) > 1 else r
        image = right.imshow(shown.to_numpy(dtype=float) * 100, aspect="auto", cmap="Blues", vmin=0)
        right.set_xticks(range(len(shown.columns)), [str(col) for col in shown.columns], fontsize=7)
        right.set_yticks(range(len(shown.index)), shown.index, fontsize=7)
        right.set(title="Retention: % of buyers ordering k months after their first",
                  xlabel="months since the first-order month (k; only months seen whole)")
        fig.colorbar(image, ax=right, label="%")
    return fig


def _save(fig, path: Path) -> None:
    """A small PNG (80 dpi, 128-colour palette, about 20 KB), so two charts inline in a Prefect artifact."""
    import io

    from PIL import Image

    from models.report import plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=80, format="png")
    plt.close(fig)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=128).save(path, format="PNG", optimize=True)
