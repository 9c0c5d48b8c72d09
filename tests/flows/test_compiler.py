"""The compiler: shipped playbooks compile to stable plans; broken ones get located, complete errors.

Golden files guard the author's experience: `golden/invalid/NAME.yaml` must fail with exactly the
text in `NAME.expected.txt`. Regenerate after an intended change with UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flows.compiler import PlaybookError, compile_file
from flows.plan import Plan
from infra.settings import SHIPPED_PLAYBOOKS, load_config

GOLDEN = Path(__file__).parent / "golden"
SHIPPED = sorted(SHIPPED_PLAYBOOKS.glob("*.yaml"))


@pytest.fixture
def config():
    return load_config()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_playbooks_compile_to_plans_that_round_trip(path, config):
    plan = compile_file(path, config)
    assert plan.name == path.stem
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.plan_hash == plan.plan_hash
    assert json.loads(plan.to_json())["segments"], "a plan without segments touches nobody"


def test_plan_hash_changes_with_content_and_not_otherwise(tmp_path, config):
    src = SHIPPED_PLAYBOOKS / "churn_winback.yaml"
    (tmp_path / "templates").symlink_to(SHIPPED_PLAYBOOKS / "templates")
    copy = tmp_path / "churn_winback.yaml"
    copy.write_text(src.read_text() + "\n# a comment changes nothing\n")
    same = compile_file(copy, config)
    copy.write_text(src.read_text().replace("monetary_365d >= 1500", "monetary_365d >= 1600"))
    changed = compile_file(copy, config)
    base = compile_file(src, config)
    assert same.plan_hash != changed.plan_hash
    assert {k: v for k, v in same.model_dump().items() if k != "source"} == {
        k: v for k, v in base.model_dump().items() if k != "source"}


INVALID = sorted(p for p in (GOLDEN / "invalid").glob("*.yaml") if p.name != "lifecycle.yaml")
VALID = sorted(p for p in (GOLDEN / "valid").glob("*.yaml") if p.name != "lifecycle.yaml")


def _golden(expected_file: Path, text: str) -> None:
    if os.environ.get("UPDATE_GOLDEN"):
        expected_file.write_text(text)
    assert text == expected_file.read_text()


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_playbooks_fail_with_the_expected_text(path, monkeypatch):
    """Each file shows one family of mistakes; the config adds a channel nobody can consent to."""
    monkeypatch.chdir(path.parent)
    from infra.errors import AuthorError

    with pytest.raises(AuthorError) as err:
        compile_file(Path(path.name), load_config("lifecycle.yaml"))
    _golden(path.with_suffix(".expected.txt"), err.value.render() + "\n")


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_playbooks_compile_to_the_expected_plan(path, monkeypatch):
    monkeypatch.chdir(path.parent)
    plan = compile_file(Path(path.name), load_config("lifecycle.yaml"))
    _golden(path.with_suffix(".plan.json"), plan.to_json(indent=2) + "\n")
    assert Plan.from_json(path.with_suffix(".plan.json").read_text()) == plan


def test_every_problem_in_a_file_is_reported_at_once(monkeypatch):
    monkeypatch.chdir(GOLDEN / "invalid")
    with pytest.raises(PlaybookError) as err:
        compile_file(Path("winback.yaml"), load_config("lifecycle.yaml"))
    assert len(err.value.problems) == 6
    lines = [p.splitlines()[0] for p in err.value.problems]
    assert lines[0] == "winback.yaml:4:1: error[L120] unknown key 'audence' (at audence)"
    assert [line.split("error[")[1][:4] for line in lines] == ["L120", "L111", "L110", "L130", "L132", "L120"]
    assert any("did you mean 'recency_days'" in p for p in err.value.problems)
    assert "did you mean 'subject'?" in err.value.problems[-1]


def test_templates_reaching_into_python_internals_are_rejected(monkeypatch):
    monkeypatch.chdir(GOLDEN / "invalid")
    with pytest.raises(PlaybookError) as err:
        compile_file(Path("bad_template.yaml"), load_config("lifecycle.yaml"))
    text = err.value.render()
    assert "__class__" in text and "Python internals" in text
    assert "did you mean 'first_name'?" in text
    assert "uses churn_score but the playbook has `model: none`" in text


def test_a_template_that_reaches_for_internals_cannot_render_either():
    from infra.errors import DispatchError
    from tasks.render import render_batch

    with pytest.raises(DispatchError):
        render_batch("{{ first_name.__class__.__mro__ }}", [{"first_name": "Ann"}])
    with pytest.raises(DispatchError):
        render_batch("{{ nothing_here }}", [{"first_name": "Ann"}])


def test_plan_carries_everything_resolved(config):
    plan = compile_file(SHIPPED_PLAYBOOKS / "churn_winback.yaml", config)
    high = plan.tier("high_value", 0)
    assert high.offer.coupon_pool == "winback_vip_20off" and high.offer.unit_cost == 30 and high.capacity == 150
    sms = plan.tier("mid_value", 0)
    assert [(v.name, v.split, v.offer is not None) for v in sms.variants] == [("coupon", 50, True), ("gift", 50, False)]
    assert plan.follow_ups[0].after_days == 3 and plan.follow_ups[0].segments == ("high_value", "mid_value")
    g = plan.guardrails
    assert (g.frequency_cap.max, g.frequency_cap.days, g.quiet_hours.action, g.priority) == (3, 7, "defer", 80)
    assert g.budget.amount == 20000 and g.budget.currency == "CNY"
    assert plan.experiment.holdout_percent == 10 and plan.experiment.salt == "churn_winback"
    assert (plan.goal.event, plan.goal.window_days) == ("order.placed", 14)
    assert (plan.schedule.cron, plan.schedule.timezone) == ("0 10 * * *", "Asia/Shanghai")
    assert plan.drift_policy == "warn" and plan.model == "churn"


def test_the_compiler_imports_no_prefect_sqlalchemy_or_lightgbm():
    """`lifecycle check` stays fast and runs anywhere: the compiler is pure."""
    import subprocess
    import sys

    code = ("import flows.compiler, sys; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'prefect', 'sqlalchemy', 'lightgbm'}); "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
