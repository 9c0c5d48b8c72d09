"""`lifecycle report PLAYBOOK`: the numbers a person checks, in a table, JSON and a self-contained HTML page,
and a clear message (no traceback) when there is nothing to measure."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest
from sqlalchemy import update

from flows.cli import main
from infra.warehouse.schema import touches
from tests.infra.test_demoresponse import warehouse_world


@pytest.fixture(scope="module")
def shared_world(tmp_path_factory):
    """A churn_winback ledger a month before the data ends, and the world's simulated answers to it."""
    path = tmp_path_factory.mktemp("report") / "warehouse.db"
    engine, as_of, response = warehouse_world(f"sqlite:///{path}")
    engine.dispose()
    return path, as_of, response


@pytest.fixture
def world(shared_world, tmp_path):
    """A copy per test, so a test may change the ledger."""
    from infra.warehouse.db import open_warehouse

    path, as_of, response = shared_world
    copy = tmp_path / "warehouse.db"
    shutil.copyfile(path, copy)
    url = f"sqlite:///{copy}"
    return url, open_warehouse(url), as_of, response


def _truth(response):
    return response.true_lift("churn_winback").loc["all", "rate_diff"]


def test_table_shows_the_lift_per_segment_tier_and_variant_with_cost_and_roi(world, capsys):
    url, _, as_of, response = world
    assert main(["report", "churn_winback", "--db", url]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == (f"churn_winback v1: as-of {as_of} to {as_of}; goal order.placed within 14 days; holdout 10%; "
                        "money in CNY")
    treated = int((response.truth["arm"] == "treated").sum())
    control = int((response.truth["arm"] == "control").sum())
    assert f"{treated:,} treated vs {control:,} held out: conversion" in lines[1] and "95% CI" in lines[1]
    for label in ("all", "high_value", "mid_value", "low_value", "mid_value / tier 1 sms / coupon",
                  "mid_value / tier 1 sms / gift"):
        assert any(line.strip().startswith(label + " ") for line in lines), label
    assert "gift vs coupon: conversion" in out
    assert "cost: " in out and "messages" in out and "redeemed" in out and "ROI: " in out
    assert "* tiers and variants are chosen after the holdout draw" in out


def test_json_is_machine_readable_and_its_interval_holds_the_true_effect(world, capsys):
    url, _, as_of, response = world
    assert main(["report", "churn_winback", "--db", url, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    overall = data["overall"]
    assert overall["treated"]["n"] == int((response.truth["arm"] == "treated").sum())
    assert overall["lift"]["rate_low"] <= _truth(response) <= overall["lift"]["rate_high"]
    assert overall["lift"]["incremental_conversions"] == pytest.approx(
        overall["lift"]["rate_diff"] * overall["treated"]["n"])
    assert {s["segment"] for s in data["segments"]} == {"high_value", "mid_value", "low_value"}
    assert sum(s["treated"]["n"] for s in data["segments"]) == overall["treated"]["n"]
    assert data["costs"]["total"] == pytest.approx(data["costs"]["message_cost"] + data["costs"]["coupon_cost"])
    assert data["curve"]["days"] == list(range(15))
    assert data["curve"]["treated"][-1] == pytest.approx(overall["treated"]["rate"])
    assert "C0" not in json.dumps(data)  # counts and rates only: no customer ids


def test_html_report_embeds_the_chart_and_writes_it_as_png(world, tmp_path, capsys):
    url, *_ = world
    out_dir = tmp_path / "rep"
    assert main(["report", "churn_winback", "--db", url, "--format", "html", "--out", str(out_dir)]) == 0
    assert str(out_dir / "report.html") in capsys.readouterr().out
    page = (out_dir / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "What churn_winback caused" in page
    assert 'src="data:image/png;base64,' in page and "Treated against control" in page
    assert "Variants against each other" in page and "vs segment control" in page
    png = (out_dir / "cumulative_conversion.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5_000


def test_json_can_be_written_to_a_folder(world, tmp_path, capsys):
    url, *_ = world
    assert main(["report", "churn_winback", "--db", url, "--format", "json", "--out", str(tmp_path / "j")]) == 0
    assert json.loads((tmp_path / "j" / "report.json").read_text())["playbook"] == "churn_winback"


def test_nothing_to_measure_is_a_clear_message_not_a_traceback(world, tmp_path, capsys):
    url, engine, as_of, _ = world
    assert main(["report", "churn_wnback", "--db", url]) == 2
    assert "error[L303]: playbook not found: churn_wnback" in capsys.readouterr().err
    assert main(["report", "dormant_wakeup", "--db", url]) == 2
    err = capsys.readouterr().err
    assert "error[L330]: no touches recorded for dormant_wakeup yet" in err and "lifecycle run dormant_wakeup" in err
    later = as_of + dt.timedelta(days=10)
    assert main(["report", "churn_winback", "--db", url, "--from", later.isoformat()]) == 2
    err = capsys.readouterr().err
    assert f"error[L330]: no touches for churn_winback with as-of day from {later} to {later}" in err
    assert f"ran on 1 day(s) from {as_of} to {as_of}" in err
    assert main(["report", "churn_winback", "--db", url, "--from", "2026-07-01", "--to", "2026-06-01"]) == 2
    assert "error[L332]" in capsys.readouterr().err

    # no holdout: the treated numbers, and why there is no lift
    with engine.begin() as conn:
        conn.execute(update(touches).where(touches.c.status == "held_out").values(status="dropped"))
    assert main(["report", "churn_winback", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "no holdout, so no lift" in out and "note: no holdout" in out and "ROI" not in out
    assert main(["report", "churn_winback", "--db", url, "--format", "html", "--out", str(tmp_path / "h")]) == 0
    assert "control (holdout)" not in (tmp_path / "h" / "report.html").read_text()


def test_a_flow_run_gets_the_same_summary_as_data_for_its_artifacts(world):
    from tasks.measure import flow_run_summary

    url, engine, as_of, _ = world
    from flows.compiler import compile_file
    from infra.settings import SHIPPED_PLAYBOOKS, load_config

    plan = compile_file(SHIPPED_PLAYBOOKS / "churn_winback.yaml", load_config())
    too_soon = flow_run_summary(engine, plan, as_of + dt.timedelta(days=13), fees={})
    assert "No earlier run of churn_winback has a finished 14-day window yet" in too_soon["markdown"]
    assert too_soon["table"] == [] and too_soon["measurement"] is None
    later = flow_run_summary(engine, plan, as_of + dt.timedelta(days=14), fees={"sms": 0.05})
    assert later["markdown"].startswith(f"## Measured effect: churn_winback, as-of {as_of} to {as_of}")
    assert "held out: conversion" in later["markdown"] and "lifecycle report churn_winback --format html" in later["markdown"]
    assert later["table"][0]["group"] == "all" and later["table"][0]["treated"] == later["measurement"]["overall"]["treated"]["n"]
    assert "C0" not in json.dumps(later, default=str)


def test_a_range_of_several_runs_says_what_each_decided_and_how_repeats_count(world, capsys):
    from sqlalchemy import select

    url, engine, as_of, _ = world
    assert main(["report", "churn_winback", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "  one run: as of " + as_of.isoformat() in out
    later = as_of + dt.timedelta(days=3)  # a second run that decided 50 of the same customers again
    with engine.begin() as conn:
        rows = conn.execute(select(touches).where(touches.c.step == "main").limit(50)).mappings().all()
        conn.execute(touches.insert(), [{**r, "touch_key": f"{r['touch_key']}-two", "as_of": later} for r in rows])
    assert main(["report", "churn_winback", "--db", url, "--to", later.isoformat()]) == 0
    out = capsys.readouterr().out
    assert "  2 runs merged:" in out
    assert f"    as of {later}: 50 customers decided (" in out and "50 of them counted from an earlier day)" in out
    assert ("  a customer decided on several days counts once, in the arm, segment and window of the first "
            "(50 decisions of later runs counted so;") in out
    assert "`lifecycle report churn_winback --from DAY --to DAY` measures one run alone" in out
