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

import pandas as pd

if TYPE_CHECKING:  # tasks.kpis imports Prefect; argument parsing must not pay for that
    from tasks.kpis import Kpis

RETENTION_COLUMNS = 12  # months after the first order shown in tables (the chart shows them all)


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
    """The period in a few sentences: funnel, repurchase, AOV and activity."""
    t = k.totals
    return [
        f"KPIs {k.start} to {k.end} (calendar months, UTC)",
        f"cohorts signed up in the period: {t['signed_up']:,} signed up -> {t['first_order']:,} first order "
        f"({_pct(t['first_order_rate'])}) -> {t['second_order']:,} second ({_pct(t['repeat_rate'])}) -> "
        f"{t['third_plus']:,} third or later",
        f"second order within 30 days of the first: {_pct(t['repurchase_30d_rate'])}; average order value "
        f"{_money(t['aov'])} over {t['orders']:,} orders",
        f"active customers (an order in the last 90 days) in {t['latest_month']}: {t['active_90d_latest']:,}",
    ]


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
    monthly = k.monthly if k.has_events else k.monthly.drop(columns="engaged")
    count = lambda v: f"{int(v):,}"  # noqa: E731
    lines = headline(k) + ["", "by month (active: an order in the 90 days up to the month's end)"]
    lines += _frame_text(monthly, {"revenue": _money, "aov": _money, **{c: count for c in
                                   ("signups", "new_buyers", "buyers", "orders", "active_90d", "engaged")}})
    cohort_cols = ["cohort", "signed_up", "first_order", "second_order", "third_plus", "first_order_rate",
                   "repeat_rate", "third_plus_rate", "repurchase_30d_rate", "aov"]
    lines += ["", "by sign-up cohort (rates: signed up -> first order -> second -> third+; 30d: second order "
                  "within 30 days of the first)"]
    lines += _frame_text(k.cohorts[cohort_cols], {
        **{c: _pct for c in cohort_cols if c.endswith("_rate")}, "aov": _money,
        **{c: count for c in ("signed_up", "first_order", "second_order", "third_plus")}})
    view = _retention_view(k)
    if len(view.columns) > 1:
        lines += ["", "retention: share of a cohort's buyers ordering k months after their first-order month "
                      "(- = not seen yet)"]
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
                   "repurchase_30d_rate", "aov"]
    monthly = k.monthly if k.has_events else k.monthly.drop(columns="engaged")
    parts = [f"# {headline(k)[0]}", "", *(f"- {line}" for line in headline(k)[1:]), ""]
    if images and paths:
        parts += [f"![active customers and order value by month]({png_data_uri(paths['monthly'])})", "",
                  f"![funnel and retention by sign-up cohort]({png_data_uri(paths['cohorts'])})", ""]
    parts += ["## By month", "", markdown_table(monthly, {"revenue": _money, "aov": _money}), "",
              "## By sign-up cohort", "",
              markdown_table(k.cohorts[cohort_cols], {"repeat_rate": _pct, "repurchase_30d_rate": _pct, "aov": _money})]
    if paths:
        parts += ["", f"Full report: `{paths['html']}`"]
    return "\n".join(parts)


# ---- files -------------------------------------------------------------------------------------

def write_report(k: Kpis, folder: Path | str) -> dict[str, Path]:
    """kpis.json, monthly.png, cohorts.png and kpis.html (charts embedded) in `folder`."""
    from models.report import embed_png, html_page

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "kpis.json", "monthly": folder / "monthly.png", "cohorts": folder / "cohorts.png",
             "html": folder / "kpis.html"}
    paths["json"].write_text(json.dumps(k.to_json(), indent=1) + "\n")
    _monthly_chart(k, paths["monthly"])
    _cohort_chart(k, paths["cohorts"])
    monthly = k.monthly if k.has_events else k.monthly.drop(columns="engaged")
    view = _retention_view(k)
    body = "".join([
        "<p>" + "<br>".join(html.escape(line) for line in headline(k)[1:]) + "</p>",
        f'<div class="charts">{embed_png(paths["monthly"], "by month")}{embed_png(paths["cohorts"], "by cohort")}</div>',
        "<h2>By month</h2><p>Active: an order in the 90 days up to the month's end. Engaged: any interaction "
        "in the month.</p>", _html_table(monthly, {"revenue": _money, "aov": _money}),
        "<h2>By sign-up cohort</h2><p>Rates: signed up &rarr; first order &rarr; second order &rarr; third or later; "
        "30d: a second order within 30 days of the first, among customers whose first order is 30+ days old.</p>",
        _html_table(k.cohorts, {**{c: _pct for c in k.cohorts.columns if c.endswith("_rate")}, "revenue": _money,
                                "aov": _money}),
        "<h2>Retention</h2><p>Share of a cohort's buyers ordering k months after the month of their first order.</p>",
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
    from models.report import plt

    m = k.monthly
    x = range(len(m))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(x, m["active_90d"], "o-", color="#1b6ca8", markersize=3, label="active (ordered in last 90 days)")
    if k.has_events:
        left.plot(x, m["engaged"], "o-", color="#3a9d5d", markersize=3, label="engaged (any interaction)")
    left.bar(x, m["new_buyers"], color="#e08a1e", alpha=.6, label="first order in the month")
    left.set(title="Customers by month", ylabel="customers")
    left.legend(fontsize=7, loc="upper left")
    right.bar(x, m["orders"], color="#cccccc", label="orders")
    right.set(title="Orders and average order value", ylabel="orders", ylim=(0, max(m["orders"].max(), 1) * 1.3))
    aov = right.twinx()
    aov.plot(x, m["aov"], "o-", color="#c0392b", markersize=3, label="average order value")
    top = m["aov"].max(skipna=True) if m["aov"].notna().any() else 1.0
    aov.set(ylabel="average order value", ylim=(0, max(top, 1.0) * 1.4))
    handles = [sum(h, []) for h in zip(right.get_legend_handles_labels(), aov.get_legend_handles_labels())]
    right.legend(*handles, fontsize=7, loc="upper left")
    for ax in (left, right):
        ax.set_xticks(list(x), m["month"], rotation=60, fontsize=7)
    _save(fig, path)


def _cohort_chart(k: Kpis, path: Path) -> None:
    from models.report import plt

    c = k.cohorts
    x = range(len(c))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    signed = c["signed_up"].replace(0, float("nan"))
    for col, label, color in (("first_order", "first order", "#1b6ca8"), ("second_order", "second order", "#3a9d5d"),
                              ("third_plus", "third or later", "#e08a1e")):
        left.plot(x, c[col] / signed * 100, "o-", color=color, markersize=3, label=f"{label} (% of sign-ups)")
    left.plot(x, c["repurchase_30d_rate"] * 100, "s--", color="#c0392b", markersize=3,
              label="second order within 30 days (% of buyers)")
    left.set(title="Funnel by sign-up cohort", ylabel="%", ylim=(0, 100))
    left.set_xticks(list(x), c["cohort"], rotation=60, fontsize=7)
    left.legend(fontsize=7, loc="lower left")
    r = k.retention
    if r.empty:
        right.set_axis_off()
    else:
        shown = r[[col for col in r.columns if int(col) >= 1]] if len(r.columns) > 1 else r
        image = right.imshow(shown.to_numpy(dtype=float) * 100, aspect="auto", cmap="Blues", vmin=0)
        right.set_xticks(range(len(shown.columns)), [str(col) for col in shown.columns], fontsize=7)
        right.set_yticks(range(len(shown.index)), shown.index, fontsize=7)
        right.set(title="Retention: % of buyers ordering k months after their first",
                  xlabel="months since the first-order month (k)")
        fig.colorbar(image, ax=right, label="%")
    _save(fig, path)


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
