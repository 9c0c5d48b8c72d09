"""`lifecycle kpis` and the KPI flow as ops meet them: the table, JSON and HTML, the charts, the artifacts."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from tests.conftest import END, flow_run_artifacts, make_world
from tests.flows.test_cli import assert_clean_failure, cli

CUSTOMER_ID = re.compile(r"\bC\d{7}\b")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('kpis') / 'warehouse.db'}"
    make_world(url, customers=1500, seed=4).dispose()
    return url


def test_json_and_report_files(world, tmp_path):
    r = cli("kpis", "--db", world, "--from", "2025-07-15", "--to", END.isoformat(), "--format", "json",
            "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [m["month"] for m in data["monthly"]][::11] == ["2025-07", "2026-06"] and len(data["monthly"]) == 12
    assert data["from"] == "2025-07-01" and data["to"] == END.isoformat()
    assert all(m["active_90d"] > 0 and m["aov"] > 0 for m in data["monthly"])
    funnel = data["totals"]
    assert funnel["signed_up"] >= funnel["first_order"] >= funnel["second_order"] >= funnel["third_plus"] > 0
    assert str(tmp_path / "kpis.html") in r.stderr
    assert json.loads((tmp_path / "kpis.json").read_text()) == data
    for chart in ("monthly.png", "cohorts.png"):
        with Image.open(tmp_path / chart) as image:
            assert image.format == "PNG" and image.width >= 600
    page = (tmp_path / "kpis.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "Retention" in page
    assert not CUSTOMER_ID.search(page + r.stdout)


def test_table_reads_as_a_report(world, tmp_path):
    r = cli("kpis", "--db", world, "--to", END.isoformat(), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first == f"KPIs 2025-07-01 to {END} (calendar months, UTC)"
    assert "by sign-up cohort" in r.stdout and "retention:" in r.stdout
    assert re.search(r"^  2026-06 .*%", r.stdout, re.M), r.stdout


def test_bad_period_and_empty_warehouse(world, tmp_path):
    assert_clean_failure(cli("kpis", "--db", world, "--from", "2026-06-01", "--to", "2026-01-31"), 2,
                         "error[L332]", "--from 2026-06-01 is after --to 2026-01-31", "hint:")
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert cli("db", "upgrade", "--db", empty).returncode == 0
    assert_clean_failure(cli("kpis", "--db", empty), 1, "no customers")


@pytest.mark.slow
def test_flow_attaches_charts_and_tables(prefect_harness, world, monkeypatch, tmp_path):
    from flows.kpiflow import kpi_flow

    monkeypatch.setenv("LIFECYCLE_DB_URL", world)
    summary = kpi_flow(end=END.isoformat(), out=str(tmp_path))
    arts = {a.key: a for a in flow_run_artifacts(summary["flow_run_id"])}
    assert set(arts) == {"kpis-summary", "kpis-monthly", "kpis-cohorts"}
    text = arts["kpis-summary"].data
    images = re.findall(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", text)
    assert len(images) == 2
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.format == "PNG" and image.width >= 600
    # small enough to render on the flow-run page without dragging: two charts and the tables
    assert len(text) < 90_000
    assert "| month |" in text and str(tmp_path / "kpis.html") in text
    monthly = arts["kpis-monthly"].data
    monthly = json.loads(monthly) if isinstance(monthly, str) else monthly
    assert len(monthly) == 12
    published = text + json.dumps([a.data for a in arts.values()], default=str)
    assert not CUSTOMER_ID.search(published)


def test_a_partial_last_month_is_marked_in_the_table_json_and_html(world, tmp_path):
    """Data to 10 June: June is 10 of 30 days. Its engaged customers and orders are a third of a month's, which
    must not read as a fall: the row says so, the headline explains it, and the JSON carries the flags."""
    r = cli("kpis", "--db", world, "--to", "2026-06-10", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "2026-06 (10 of 30 days) is partial: the period ends on 2026-06-10" in r.stdout
    assert re.search(r"^  2026-06 \(10 of 30 days\) +[\d,]+ ", r.stdout, re.M), r.stdout
    assert re.search(r"^  2026-05 +[\d,]+ ", r.stdout, re.M)  # whole months as before
    assert "active customers (an order in the 90 days up to 2026-06-10):" in r.stdout
    retention = lines[lines.index(next(x for x in lines if x.startswith("retention:"))) + 1]
    assert retention.split()[-1] == "m10"  # July 2025 (the first cohort) to May, the last month seen whole
    data = json.loads(cli("kpis", "--db", world, "--to", "2026-06-10", "--format", "json",
                          "--out", str(tmp_path)).stdout)
    assert data["partial_month"] == "2026-06 (10 of 30 days)"
    assert [m["complete"] for m in data["monthly"]] == [True] * 11 + [False]
    assert data["cohorts"][-1]["cohort"] == "2026-06" and data["cohorts"][-1]["complete"] is False
    # cohorts whose month ended under 90 days before 10 June are still maturing: March's (71 days) is
    assert [(c["cohort"], c["settled"]) for c in data["cohorts"]][-5:] == [
        ("2026-02", True), ("2026-03", False), ("2026-04", False), ("2026-05", False), ("2026-06", False)]
    assert re.search(r"^  2026-03 \(maturing\) +[\d,]+ ", r.stdout, re.M) and "A cohort marked maturing" in r.stdout
    page = (tmp_path / "kpis.html").read_text()
    assert "<td>2026-06 (10 of 30 days)</td>" in page and "is partial" in page


def test_the_30_day_repurchase_rate_is_defined_once_in_every_output(world, tmp_path):
    from tasks.kpis import REPURCHASE_DEFINITION

    table = cli("kpis", "--db", world, "--to", END.isoformat(), "--out", str(tmp_path))
    data = json.loads(cli("kpis", "--db", world, "--to", END.isoformat(), "--format", "json",
                          "--out", str(tmp_path)).stdout)
    page = (tmp_path / "kpis.html").read_text()
    assert data["definitions"]["repurchase_30d"] == REPURCHASE_DEFINITION
    assert REPURCHASE_DEFINITION.startswith("a second order within 30 days of the first, among customers whose "
                                            "first order is at least 30 days before the period's end")
    assert f"30-day repurchase rate: {data['totals']['repurchase_30d_rate']:.1%} ({REPURCHASE_DEFINITION})" \
        in table.stdout
    assert f"30d: {REPURCHASE_DEFINITION})" in table.stdout  # the cohort table's heading
    assert f"30d: {html.escape(REPURCHASE_DEFINITION)}." in page
    assert f"30-day repurchase rate: {data['totals']['repurchase_30d_rate']:.1%} " \
           f"({html.escape(REPURCHASE_DEFINITION)})" in page


def test_the_charts_draw_a_partial_month_apart(world):
    """The chart must not draw June's ten days as a fall from May: the in-month counts of a partial month hang
    off the line dashed and hollow, its bars hatched, its tick says how much of it there is."""
    from matplotlib.lines import Line2D

    from flows.kpicmd import cohort_figure, monthly_figure
    from infra.warehouse.db import open_warehouse
    from models.report import plt
    from tasks.kpis import compute

    k = compute(open_warehouse(world), None, dt.date(2026, 6, 10))
    engaged = k.monthly["engaged"].to_numpy(dtype=float)
    fig = monthly_figure(k)
    left = fig.axes[0]
    solid = next(line for line in left.get_lines() if line.get_label().startswith("engaged"))
    assert np.isnan(solid.get_ydata()[-1]) and solid.get_ydata()[-2] == engaged[-2]
    apart = [line for line in left.get_lines() if line.get_linestyle() == "--"]
    assert any(list(line.get_ydata()) == [engaged[-2], engaged[-1]] and line.get_markerfacecolor() == "white"
               for line in apart), apart
    bars = [p for p in left.patches if p.get_hatch()]
    assert len(bars) == 1 and bars[0].get_height() == k.monthly["new_buyers"].iloc[-1]
    assert [t.get_text() for t in left.get_xticklabels()][-2:] == ["2026-05", "2026-06 (10/30 days)"]
    assert any("partial" in t.get_text() for t in left.get_legend().get_texts())
    plt.close(fig)
    fig = cohort_figure(k)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][-1] == "2026-06 (10/30 days)"
    first = next(line for line in fig.axes[0].get_lines() if line.get_label().startswith("first order"))
    settled = k.cohorts["settled"].to_numpy()
    assert np.isnan(first.get_ydata()[~settled]).all() and not np.isnan(first.get_ydata()[settled]).any()
    assert any("maturing" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert all(isinstance(line, Line2D) for line in fig.axes[0].get_lines())
    plt.close(fig)
    # a period of whole months draws every line solid, as before
    fig = monthly_figure(compute(open_warehouse(world), None, END))
    assert not [line for line in fig.axes[0].get_lines() if line.get_linestyle() == "--"]
    assert not [p for p in fig.axes[0].patches if p.get_hatch()]
    plt.close(fig)
