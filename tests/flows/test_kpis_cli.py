"""`lifecycle kpis` and the KPI flow as ops meet them: the table, JSON and HTML, the charts, the artifacts."""

from __future__ import annotations

import base64
import io
import json
import re

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
