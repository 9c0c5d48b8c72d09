"""What a flow run publishes to Prefect (artifacts ops read on the flow-run page) carries counts, never personal data."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from flows.build import run_plan
from flows.compiler import compile_file
from infra.settings import SHIPPED_PLAYBOOKS, load_config, outbox_dir
from tests.conftest import END, flow_run_artifacts, make_world

pytestmark = pytest.mark.slow


def test_artifacts_carry_no_customer_ids_addresses_phones_or_message_text(prefect_harness, sqlite_url, monkeypatch):
    engine = make_world(sqlite_url, customers=1500, seed=11)
    monkeypatch.setenv("LIFECYCLE_DB_URL", sqlite_url)
    path = SHIPPED_PLAYBOOKS / "new_customer_onboarding.yaml"
    plan = compile_file(path, load_config())
    summary = run_plan(plan, str(path), END, dry_run=False, model_version=None)
    messages = [json.loads(line) for p in outbox_dir().glob("*.jsonl") for line in p.read_text().splitlines()]
    assert messages, "the onboarding playbook sends to the newest customers of the demo world"

    arts = flow_run_artifacts(summary["flow_run_id"])
    assert {a.type for a in arts} == {"markdown", "table"}
    published = "\n".join(json.dumps(a.data, ensure_ascii=False) if not isinstance(a.data, str) else a.data
                          for a in arts) + "\n".join(a.description or "" for a in arts)
    assert "sent" in published  # the summary is there, and read correctly
    people = pd.read_sql("select customer_id, email, phone, first_name from customers", engine)
    secrets = {str(v) for col in ("customer_id", "email", "phone") for v in people[col].dropna()}
    # every line of every message body long enough to be specific (greetings like "Hi" are not)
    secrets |= {line.strip() for m in messages for line in str(m["body"]).splitlines() if len(line.strip()) >= 12}
    leaked = sorted(s for s in secrets if s in published)
    assert leaked == [], f"artifacts leak personal data or message text: {leaked[:5]}"
