"""The `lifecycle` command as a user meets it: exit codes, one clear line, never a traceback for bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import END, make_world

LIFECYCLE = str(Path(sys.executable).with_name("lifecycle"))


def cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([LIFECYCLE, *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def assert_clean_failure(result, code: int, *needles: str) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == code, out
    assert "Traceback" not in out, out
    for needle in needles:
        assert needle in out, out


def test_missing_playbook_path():
    r = cli("run", "playbooks/winbak.yaml")
    assert_clean_failure(r, 2, "error[L303]: playbook not found: playbooks/winbak.yaml")


def test_misspelled_shipped_playbook_gets_a_suggestion():
    assert_clean_failure(cli("check", "churn_winbak"), 2, "did you mean 'churn_winback'?")


def test_unreachable_database_url():
    r = cli("run", "churn_winback", "--db", "postgresql://nobody:secret@127.0.0.1:1/none")
    assert_clean_failure(r, 1, "cannot connect to the warehouse at postgresql://nobody:***@127.0.0.1:1/none")
    assert "secret" not in r.stderr


def test_no_warehouse_yet_creates_nothing(tmp_path):
    db = tmp_path / "nothing.db"
    assert_clean_failure(cli("run", "churn_winback", "--db", f"sqlite:///{db}"), 1, "no warehouse at", "lifecycle demo")
    assert not db.exists()


def test_empty_warehouse(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert cli("db", "upgrade", "--db", url).returncode == 0
    assert_clean_failure(cli("run", "churn_winback", "--db", url), 1, "no customers", "lifecycle data generate")


def test_no_trained_model(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    make_world(url, customers=300)
    assert_clean_failure(cli("run", "churn_winback", "--db", url), 1, "no trained 'churn' model", "lifecycle model train")


def test_bad_arguments_exit_2():
    assert_clean_failure(cli("run", "churn_winback", "--as-of", "yesterday"), 2, "not a date")
    assert_clean_failure(cli("data", "generate", "--customers", "0"), 2, "must be at least 1")


def test_broken_playbook_points_at_the_line(tmp_path):
    bad = tmp_path / "winback.yaml"
    bad.write_text("name: winback\nsegments:\n  - name: a\n    whn: \"recency_days > 30\"\n    tiers: []\n")
    r = cli("check", str(bad))
    assert_clean_failure(r, 2, f"{bad}:4:5: error[L120] unknown key 'whn'", "did you mean 'when'?")


def test_bad_config_points_at_the_line(tmp_path):
    cfg = tmp_path / "lifecycle.yaml"
    cfg.write_text("channels:\n  sms:\n    type: outbox\n    consnet: sms\n")
    assert_clean_failure(cli("check", "churn_winback", "--config", str(cfg)), 2,
                         f"{cfg}:4:5: error[L204] unknown key 'consnet'", "did you mean 'consent'?")


def test_check_passes_shipped_playbooks():
    r = cli("check", "churn_winback", "dormant_wakeup", "birthday_care")
    assert r.returncode == 0 and r.stdout.count("ok  ") == 3, r.stdout + r.stderr
    assert "3 segments, 5 tiers, 1 follow-up, channels" in r.stdout  # one follow-up is "1 follow-up"
    every = cli("check")
    shipped = len(list((Path(__file__).resolve().parents[2] / "playbooks").glob("*.yaml")))
    assert every.returncode == 0 and every.stdout.count("ok  ") == shipped >= 5, every.stdout + every.stderr


def test_check_reports_every_file_in_the_required_format(tmp_path):
    (tmp_path / "tabbed.yaml").write_text("name: tabbed\nsegments:\n\t- name: a\n")
    (tmp_path / "typo.yaml").write_text("name: typo\nsegments:\n  - name: a\n    when: \"monetary_356d > 1\"\n"
                                        "    tiers: [{channel: push, template: x.j2}]\n")
    r = cli("check", str(tmp_path))
    assert_clean_failure(r, 2, f"{tmp_path / 'tabbed.yaml'}:3:1: error[L104] invalid YAML: a tab in the indentation",
                         f"{tmp_path / 'typo.yaml'}:4:12: error[L111] unknown feature 'monetary_356d'",
                         "did you mean 'monetary_365d'", "^", "error[L132] template file not found")


def test_compile_writes_the_same_json_every_time(tmp_path):
    first, second = cli("compile", "churn_winback"), cli("compile", "churn_winback", "--out", str(tmp_path / "p.json"))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == (tmp_path / "p.json").read_text()
    plan = json.loads(first.stdout)
    assert plan["name"] == "churn_winback" and plan["guardrails"]["budget"]["amount"] == 20000


def test_plan_previews_against_the_warehouse_as_json(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    make_world(url, customers=600)
    r = cli("plan", "new_customer_onboarding", "--as-of", END.isoformat(), "--db", url, "--format", "json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["playbook"] == "new_customer_onboarding" and report["tiers"]
    table = cli("plan", "new_customer_onboarding", "--as-of", END.isoformat(), "--db", url)
    assert table.returncode == 0 and "projected cost:" in table.stdout, table.stderr


@pytest.mark.slow
def test_generate_train_run_rerun_from_the_command_line(tmp_path):
    """The path a new user takes, in separate processes, with Prefect's ephemeral server each time."""
    url = f"sqlite:///{tmp_path / 'w.db'}"
    env = {"PREFECT_HOME": str(tmp_path / "prefect")}
    gen = cli("data", "generate", "--customers", "2000", "--seed", "4", "--end", END.isoformat(), "--db", url)
    assert gen.returncode == 0 and "2,000 customers" in gen.stdout, gen.stderr
    again = cli("data", "generate", "--customers", "10", "--db", url)
    assert_clean_failure(again, 1, "already has 2000 customers")
    train = cli("model", "train", "--db", url)
    assert train.returncode == 0 and "validation AUC" in train.stdout, train.stderr
    # a day before the model's data ends: plan says the model has seen what came later, and what to do
    past = cli("plan", "churn_winback", "--as-of", "2026-06-01", "--db", url)
    assert past.returncode == 0, past.stderr
    assert re.search(r"warning: model churn-\S+ learned from data up to 2026-06-\d\d, after this run's day 2026-06-01",
                     past.stderr), past.stderr
    assert "`lifecycle model train --as-of 2026-06-01`" in past.stderr

    first = cli("run", "churn_winback", "--as-of", END.isoformat(), "--db", url, env=env)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out
    assert "Traceback" not in out and "| ERROR" not in out and "| WARNING" not in out, out
    assert "churn_winback v1 as of 2026-06-30" in first.stdout and "touches sent:" in first.stdout
    assert "http://127.0.0.1:4200/runs/flow-run/" in first.stdout
    sms = Path(os.environ["LIFECYCLE_HOME"]) / "outbox" / "sms.jsonl"
    lines = [json.loads(line) for line in sms.read_text().splitlines()]
    assert lines and all(m["playbook"] == "churn_winback" for m in lines)

    second = cli("run", "churn_winback", "--as-of", END.isoformat(), "--db", url, env=env)
    assert second.returncode == 0 and "touches sent: none" in second.stdout, second.stdout + second.stderr
    assert "already sent earlier for this date (not repeated)" in second.stdout
    assert len(sms.read_text().splitlines()) == len(lines)


def test_run_links_point_at_the_server_the_runs_went_to(monkeypatch):
    """With PREFECT_API_URL set (a remote server, another port), the printed links open that server's
    UI, not the embedded default's http://127.0.0.1:4200."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.commands import _ui_hint

    run = {"flow_run_name": "churn_winback-2026-06-30", "flow_run_id": "0f1e"}
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert "http://127.0.0.1:4200/runs/flow-run/0f1e" in _ui_hint([run])
    monkeypatch.setenv("PREFECT_API_URL", "http://10.1.2.3:4300/api")
    with temporary_settings({PREFECT_API_URL: "http://10.1.2.3:4300/api"}):
        hint = _ui_hint([run])
    assert "churn_winback-2026-06-30: http://10.1.2.3:4300/runs/flow-run/0f1e" in hint and "4200" not in hint
