"""`lifecycle plan`: a preview against the warehouse that agrees with the run and writes nothing."""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import func, select

from flows.compiler import compile_file
from flows.preview import format_preview, mask, preview
from infra.settings import SHIPPED_PLAYBOOKS, load_config, outbox_dir
from infra.warehouse.schema import touches
from tests.conftest import END, make_world


def test_masking_keeps_ids_apart_but_unusable():
    assert mask("C00012342") == "C00****42" and mask("abc") == "****"


def test_preview_counts_costs_and_samples_without_writing(sqlite_url):
    engine = make_world(sqlite_url, customers=1500, seed=11)
    plan = compile_file(SHIPPED_PLAYBOOKS / "new_customer_onboarding.yaml", load_config())
    report = preview(plan, engine, END)
    json.dumps(report)  # --format json prints exactly this
    assert report["audience"] > 0 and sum(t["customers"] for t in report["tiers"]) > 0
    assert sum(t["customers"] for t in report["tiers"]) + sum(report["dropped"].values()) == \
        sum(report["segments"].values())
    assert report["cost"] == sum(t["cost"] for t in report["tiers"]) <= plan.guardrails.budget.amount
    assert report["dropped"].get("holdout", 0) <= report["audience"] * 0.2
    for s in report["samples"]:
        assert "****" in s["customer"] and s["body"]
    per_tier = {}
    for s in report["samples"]:
        per_tier[(s["segment"], s["tier"])] = per_tier.get((s["segment"], s["tier"]), 0) + 1
    assert per_tier and max(per_tier.values()) <= 3
    text = format_preview(report)
    assert "nothing sent, nothing written" in text and "not touched:" in text
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(touches)).scalar_one() == 0
    assert list(outbox_dir().glob("*.jsonl")) == []


def test_preview_holdout_is_the_runs_holdout(sqlite_url):
    engine = make_world(sqlite_url, customers=800, seed=12)
    plan = compile_file(SHIPPED_PLAYBOOKS / "new_customer_onboarding.yaml", load_config())
    report = preview(plan, engine, END - dt.timedelta(days=3))
    again = preview(plan, engine, END - dt.timedelta(days=3))
    assert report == again  # deterministic: same warehouse, same answer
    assert report["dropped"].get("holdout", 0) <= sum(report["segments"].values())


def test_a_sample_cut_at_its_length_ends_with_an_ellipsis():
    report = {"playbook": "p", "version": "1", "as_of": "2026-06-30", "plan_hash": "h", "model_version": None,
              "send_at": "2026-06-30T10:00:00+00:00", "customers": 1, "audience": 1, "unmatched": 0,
              "tiers": [], "dropped": {}, "deferred": 0, "cost": 0.0, "currency": "CNY", "budget": None,
              "samples": [{"segment": "a", "tier": 0, "variant": None, "customer": "C00****42", "subject": None,
                           "body": "word " * 60},
                          {"segment": "a", "tier": 0, "variant": None, "customer": "C00****43", "subject": None,
                           "body": "Hi there"}]}
    cut, whole = format_preview(report).splitlines()[-2:]
    assert cut.endswith("word…") and len(cut.split(": ", 1)[1]) == 150
    assert whole.endswith("C00****43: Hi there")
