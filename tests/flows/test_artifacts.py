"""What ops read on a flow run's page in the Prefect UI: every table artifact has the same columns in every row
(the UI draws the first row's keys as the columns, so a key the first row lacks is a column nobody sees), and
cells read as the run summary does (thousands separators, percentages, currency, what a reason means)."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from flows.artifacts import deliver_markdown, drop_rows, effect_table, segment_rows, uniform
from tests.conftest import END, flow_run_artifacts, make_world

# the segment x tier counts of a real churn_winback run: each segment reached through its own tiers
SEGMENTS = {"high_value": 153, "mid_value": 676, "low_value": 440}
SEGMENT_TIER = {"high_value": {"tier 1 advisor": 75, "tier 2 sms": 36},
                "mid_value": {"tier 1 sms": 376, "tier 2 push": 105},
                "low_value": {"tier 1 push": 188}}


def _columns(rows):
    return {tuple(r) for r in rows}


def test_segment_table_shows_every_segments_tiers_not_only_the_first_ones():
    rows = segment_rows(SEGMENTS, SEGMENT_TIER)
    assert len(_columns(rows)) == 1, "one set of columns, or the UI leaves the other segments blank"
    assert list(rows[0]) == ["segment", "tier", "channel", "customers", "of segment"]
    shown = {(r["segment"], r["tier"], r["channel"]): r["customers"] for r in rows}
    assert shown[("mid_value", "1", "sms")] == "376" and shown[("low_value", "1", "push")] == "188"
    # each segment's rows add up to its customers: the rest are the ones no tier reached
    for seg, n in SEGMENTS.items():
        assert sum(int(r["customers"].replace(",", "")) for r in rows if r["segment"] == seg) == n
    assert shown[("high_value", "—", "not touched (see the drops table)")] == "42"
    assert list(dict.fromkeys(r["segment"] for r in rows)) == list(SEGMENTS), "in the playbook's order"


def test_segment_table_counts_have_separators_and_an_empty_segment_says_so():
    rows = segment_rows({"big": 12_345, "empty": 0}, {"big": {"tier 2 email": 2_000, "tier 1 push": 10_000}})
    assert [(r["tier"], r["channel"], r["customers"], r["of segment"]) for r in rows] == [
        ("1", "push", "10,000", "81.0%"), ("2", "email", "2,000", "16.2%"),
        ("—", "not touched (see the drops table)", "345", "2.8%"), ("—", "nobody in this segment", "0", "—")]


def test_no_cell_is_a_lone_dash_the_ui_draws_it_as_a_list_bullet():
    rows = uniform([{"a": 1}, {"b": None}])
    assert rows == [{"a": 1, "b": "—"}, {"a": "—", "b": "—"}]


def test_drops_say_what_each_reason_means():
    rows = drop_rows({"priority": 21, "no_consent": 357, "odd": 1}, {"no_consent": "no consent"}.get)
    assert rows[0] == {"reason": "no_consent", "customers": "357", "what it means": "no consent"}
    assert rows[-1]["what it means"] == "—" and len(_columns(rows)) == 1
    assert drop_rows({}, str)[0]["what it means"] == "every customer decided today was touched"


def test_the_runs_drops_explain_reasons_with_the_playbooks_own_cap_and_a_reason_explain_does_not_know_is_blank():
    from flows.build import _meaning
    from flows.compiler import compile_file
    from infra.settings import SHIPPED_PLAYBOOKS, load_config

    plan = compile_file(SHIPPED_PLAYBOOKS / "churn_winback.yaml", load_config())
    cap = plan.guardrails.frequency_cap
    rows = {r["reason"]: r["what it means"] for r in drop_rows({"frequency_cap": 3, "new_reason": 1}, _meaning(plan))}
    assert rows == {"frequency_cap": f"already had {cap.max} touches in {cap.days} days (frequency cap, counted "
                                     "across playbooks)", "new_reason": "—"}


def test_effect_table_rates_as_percent_money_with_currency_and_rows_without_a_lift_keep_the_columns():
    table = [
        {"group": "all", "by": "overall", "treated": 1158, "sent": 779, "treated_rate": 0.0769, "control": 111,
         "control_rate": 0.036, "lift_pts": 4.08, "low_pts": -1.4, "high_pts": 6.84, "revenue_lift": 15.03,
         "comparison": "randomised"},
        {"group": "vip / tier 1 advisor", "by": "tier", "treated": 63, "sent": 63, "treated_rate": 0.2063,
         "control": None, "control_rate": None},  # no one held out here: no lift keys at all
    ]
    rows, description = effect_table(table, "CNY", 0.95)
    assert len(_columns(rows)) == 1
    assert rows[0] == {"group": "all", "treated / held out": "1,158 / 111", "sent": "779",
                       "converted": "7.7% vs 3.6%", "lift, pts (95% CI)": "+4.1 (-1.4 to +6.8)",
                       "revenue lift": "+15.03 CNY", "comparison": "randomised"}
    assert rows[1]["converted"] == "20.6%" and rows[1]["lift, pts (95% CI)"] == "—"
    assert rows[1]["comparison"] == "no holdout, so no lift"
    # one way of comparing for every group: said once in the description, not in a column
    rows, description = effect_table(table[:1], None)
    assert "comparison" not in rows[0] and "(randomised)" in description
    assert rows[0]["revenue lift"] == "+15.03"


def test_deliver_summary_says_why_deferred_touches_were_dropped():
    text = deliver_markdown("Deferred touches due at 2026-06-30 10:00 UTC", {"sms": 1200}, {"expired": 14}, {}, 0)
    assert "- sent: sms 1,200" in text and "- dropped: expired 14" in text
    assert "expired: its window after the quiet hours passed" in text


# ---- through Prefect, read back as the UI reads them ----------------------------------------------------


def _rows(artifact):
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


def _assert_reads_as_a_table(artifact):
    rows = _rows(artifact)
    assert artifact.type == "table" and rows
    assert len(_columns(rows)) == 1, f"{artifact.key}: rows with different columns: {_columns(rows)}"
    assert not [c for r in rows for c in r.values() if str(c).strip() == "-"], f"{artifact.key}: a '-' cell"
    return rows


@pytest.mark.slow
def test_a_runs_tables_read_back_from_prefect_have_one_set_of_columns(prefect_harness, sqlite_url, monkeypatch):
    from flows.build import run_plan
    from flows.compiler import compile_file
    from flows.training import train
    from infra.settings import SHIPPED_PLAYBOOKS, load_config

    engine = make_world(sqlite_url, customers=2500, seed=5)
    first_day = END - dt.timedelta(days=15)  # churn_winback's goal window (14 days) has ended by END
    train(engine, first_day, 90)
    monkeypatch.setenv("LIFECYCLE_DB_URL", sqlite_url)
    path = SHIPPED_PLAYBOOKS / "churn_winback.yaml"
    plan = compile_file(path, load_config())
    run_plan(plan, str(path), first_day, dry_run=False, model_version=None)
    summary = run_plan(plan, str(path), END, dry_run=False, model_version=None)
    arts = {a.key: a for a in flow_run_artifacts(summary["flow_run_id"])}

    segments = _assert_reads_as_a_table(arts["churn-winback-segments"])
    touched = {r["segment"] for r in segments if r["tier"] != "—"}
    assert len(touched) >= 2, "more than the first segment shows its tiers"
    for seg, n in summary["segments"].items():
        assert sum(int(r["customers"].replace(",", "")) for r in segments if r["segment"] == seg) == n

    drops = _assert_reads_as_a_table(arts["churn-winback-drops"])
    assert {r["reason"] for r in drops} == set(summary["dropped"])
    assert all(r["what it means"] != "—" for r in drops), drops  # the reasons a run gives are all explained

    effect = _assert_reads_as_a_table(arts["churn-winback-effect"])
    assert effect[0]["group"] == "all" and re.fullmatch(r"[\d.]+% vs [\d.]+%", effect[0]["converted"])
    assert effect[0]["revenue lift"].endswith(" CNY")
    assert "(randomised)" in arts["churn-winback-effect"].description

    text = arts["churn-winback-summary"].data
    assert text.count("Full report:") == 1 and "lifecycle explain CUSTOMER_ID --playbook churn_winback" in text


@pytest.mark.slow
def test_deliver_runs_are_named_for_their_time_like_the_other_flows(prefect_harness, sqlite_url, monkeypatch):
    import asyncio

    from prefect.client.orchestration import get_client

    from flows.build import deliver_flow

    make_world(sqlite_url, customers=300, seed=2)
    monkeypatch.setenv("LIFECYCLE_DB_URL", sqlite_url)

    def run_of(playbook):
        state = deliver_flow(playbook=playbook, return_state=True)
        run_id = state.state_details.flow_run_id

        async def read():
            async with get_client() as client:
                return await client.read_flow_run(run_id)

        return asyncio.run(read()), run_id

    before = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    every, run_id = run_of(None)
    one, _ = run_of("churn_winback")
    after = dt.datetime.now(dt.UTC)
    stamp = re.fullmatch(r"deliver-due-(\d{4}-\d\d-\d\dT\d\d:\d\d)", every.name)
    assert stamp, f"not a name like the event relay's and the KPI flow's: {every.name!r}"
    assert before <= dt.datetime.fromisoformat(stamp.group(1)).replace(tzinfo=dt.UTC) <= after
    assert re.fullmatch(r"deliver-due-churn_winback-\d{4}-\d\d-\d\dT\d\d:\d\d", one.name), one.name
    [page] = flow_run_artifacts(str(run_id))
    assert page.data.startswith(f"# Deferred touches due at {stamp.group(1).replace('T', ' ')} UTC")


@pytest.mark.slow
def test_kpi_tables_show_rates_as_percent_and_counts_with_separators(prefect_harness, sqlite_url, monkeypatch,
                                                                      tmp_path):
    from flows.kpiflow import kpi_flow

    make_world(sqlite_url, customers=3000, seed=3)
    monkeypatch.setenv("LIFECYCLE_DB_URL", sqlite_url)
    summary = kpi_flow(end=END.isoformat(), out=str(tmp_path))
    arts = {a.key: a for a in flow_run_artifacts(summary["flow_run_id"])}
    monthly = _assert_reads_as_a_table(arts["kpis-monthly"])
    cohorts = _assert_reads_as_a_table(arts["kpis-cohorts"])
    assert list(monthly[0])[:3] == ["month", "signed up", "new buyers"] and "AOV" in monthly[0]
    assert any("," in r["orders"] for r in monthly), "thousands separators on the counts"
    assert all(re.fullmatch(r"[\d,]+ \(\d+\.\d%\)", r["1st order"]) for r in cohorts[:-1]), cohorts[0]
    assert not any(k.endswith("_rate") or "_" in k for k in cohorts[0]), list(cohorts[0])
    assert re.fullmatch(r"\d+\.\d% of [\d,]+", cohorts[0]["2nd in 30 days"]), cohorts[0]
    # a month cut short and a maturing cohort say so in their label, not in True/False columns
    assert not any(v in ("True", "False") for r in monthly + cohorts for v in r.values())
    assert not {"days", "days in month", "complete", "age days", "settled"} & (set(monthly[0]) | set(cohorts[0]))
    assert cohorts[-1]["cohort"].endswith("(maturing)"), cohorts[-1]


@pytest.mark.slow
def test_the_relays_page_gives_its_window_to_the_second_in_utc_and_counts_in_words(prefect_harness, sqlite_url,
                                                                                   monkeypatch):
    from flows.relay import relay_flow
    from infra.settings import SHIPPED_PLAYBOOKS
    from infra.warehouse.bulk import utcnow
    from tests.conftest import add_first_buyers

    monkeypatch.setenv("LIFECYCLE_DB_URL", sqlite_url)
    engine = make_world(sqlite_url, customers=300, seed=4)
    at = utcnow() - dt.timedelta(minutes=5)
    add_first_buyers(engine, {"N1": at}, at - dt.timedelta(days=1))
    state = relay_flow(playbooks=[str(SHIPPED_PLAYBOOKS / "new_customer_onboarding.yaml")], mode="run",
                       return_state=True)
    [page] = [a for a in flow_run_artifacts(str(state.state_details.flow_run_id)) if a.key == "event-relay"]
    assert re.search(r"^- order\.placed: 1 event after \d{4}-\d\d-\d\d \d\d:\d\d:\d\d, up to "
                     r"(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d UTC$", page.data, re.M), page.data  # was 01:17:40.650891
    assert "- ran new_customer_onboarding for 1 customer: touches " in page.data, page.data
