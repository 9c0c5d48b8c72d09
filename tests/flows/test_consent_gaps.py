"""`plan` and `run` say why a whole channel drops everyone (no consents for it), and whose quiet hours are
judged in UTC for want of a timezone."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, update

from flows.compiler import compile_file
from flows.preview import format_preview, preview
from infra.settings import SHIPPED_PLAYBOOKS, load_config
from infra.warehouse.schema import consents, customers
from tests.conftest import END, make_world

PLAYBOOK = SHIPPED_PLAYBOOKS / "new_customer_onboarding.yaml"  # tiers on advisor (wecom), push, email and sms
NO_SMS = ("the warehouse has no marketing consent for sms at all: every sms tier skips its {n} customers as "
          "no_consent; import consents with `lifecycle data import consents FILE`")


@pytest.fixture
def world(sqlite_url):
    return make_world(sqlite_url, customers=1500, seed=11)


def test_plan_says_when_no_customer_of_a_tier_has_its_consent(world):
    plan = compile_file(PLAYBOOK, load_config())
    assert preview(plan, world, END)["consent_gaps"] == []  # the demo world has consents for every channel
    with world.begin() as conn:
        conn.execute(delete(consents).where(consents.c.channel == "sms"))
    report = preview(plan, world, END)
    sms_segments = {s.name for s in plan.segments if any(t.channel == "sms" for t in s.tiers)}
    n = sum(report["segments"].get(s, 0) for s in sms_segments)
    assert [g["channel"] for g in report["consent_gaps"]] == ["sms"] and report["consent_gaps"][0]["customers"] == n > 0
    text = format_preview(report)
    assert text.count("warning:") == 1 and f"  warning: {NO_SMS.format(n=f'{n:,}')}" in text
    # consents for sms that belong to nobody in the audience: a different sentence, the same advice
    with world.begin() as conn:
        conn.execute(consents.insert().values(customer_id="not-a-customer", channel="sms", purpose="marketing",
                                              granted_at=END))
    gap = preview(plan, world, END)["consent_gaps"][0]
    assert gap["message"].startswith("no customer in the audience has a marketing consent for sms: every sms tier "
                                     f"skips its {n:,} customers as no_consent")


def test_plan_warns_when_customers_quiet_hours_are_judged_in_utc(world):
    plan = compile_file(PLAYBOOK, load_config())
    report = preview(plan, world, END, default_timezone="Asia/Shanghai")
    assert report["timezones"] == {"unusable": 0, "utc": 0, "default": "Asia/Shanghai"}
    assert "warning:" not in format_preview(report)
    with world.begin() as conn:
        conn.execute(update(customers).values(timezone="UTC"))
    report = preview(plan, world, END, default_timezone="Asia/Shanghai")
    n = report["audience"]
    assert report["timezones"]["utc"] == n > 0
    assert (f"warning: {n:,} customers in the audience are in UTC while defaults.timezone is Asia/Shanghai: customers "
            "imported without a timezone before it was set were stored as UTC; if they live in Asia/Shanghai, "
            "`lifecycle data import customers FILE --default-timezone Asia/Shanghai` corrects them") in format_preview(report)
    assert preview(plan, world, END)["timezones"]["utc"] == 0  # without a default, UTC is nobody's mistake
    with world.begin() as conn:  # written by another tool: an empty name, read as UTC by every run
        conn.execute(update(customers).values(timezone=""))
    text = format_preview(preview(plan, world, END))
    assert f"warning: {n:,} customers in the audience have no timezone zoneinfo knows (empty or unknown)" in text


@pytest.mark.slow
def test_a_run_says_it_in_its_summary(prefect_harness, world, sqlite_url, monkeypatch):
    from flows.build import run_plan
    from flows.summary import format_summary

    monkeypatch.setenv("LIFECYCLE_DB_URL", sqlite_url)
    with world.begin() as conn:
        conn.execute(delete(consents).where(consents.c.channel == "sms"))
    plan = compile_file(PLAYBOOK, load_config())
    summary = run_plan(plan, str(PLAYBOOK), END, dry_run=True, model_version=None)
    [gap] = summary["consent_gaps"]
    assert gap["channel"] == "sms" and gap["customers"] > 0
    n = f"{gap['customers']:,}"
    assert f"  warning: {NO_SMS.format(n=n)}" in format_summary(summary)
