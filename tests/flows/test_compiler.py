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


INVALID = sorted((GOLDEN / "invalid").glob("*.yaml"))


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_playbooks_fail_with_the_expected_text(path, config, monkeypatch):
    monkeypatch.chdir(path.parent)
    from infra.errors import AuthorError

    with pytest.raises(AuthorError) as err:
        compile_file(Path(path.name), config)
    text = err.value.render()
    expected_file = path.with_suffix(".expected.txt")
    if os.environ.get("UPDATE_GOLDEN"):
        expected_file.write_text(text + "\n")
    assert text + "\n" == expected_file.read_text()


def test_every_problem_in_a_file_is_reported_at_once(config, monkeypatch):
    monkeypatch.chdir(GOLDEN / "invalid")
    with pytest.raises(PlaybookError) as err:
        compile_file(Path("winback.yaml"), config)
    assert len(err.value.problems) == 6
    lines = [p.splitlines()[0] for p in err.value.problems]
    assert lines[0].startswith("winback.yaml:4:1: unknown key 'audence'")
    assert any("did you mean 'recency_days'" in p for p in err.value.problems)
    assert "did you mean 'subject'?" in err.value.problems[-1]


def test_templates_reaching_into_python_internals_are_rejected(config, monkeypatch):
    monkeypatch.chdir(GOLDEN / "invalid")
    with pytest.raises(PlaybookError) as err:
        compile_file(Path("bad_template.yaml"), config)
    text = err.value.render()
    assert "__class__" in text and "Python internals" in text
    assert "did you mean 'first_name'?" in text
    assert "uses churn_score but the playbook has `model: none`" in text
