"""The author's guide lists exactly the features the code has: it is generated, and this keeps it so."""

from flows.docs import GUIDE, render_guide


def test_feature_table_in_the_guide_is_current():
    text = GUIDE.read_text()
    assert render_guide(text) == text, "run `python -m flows.docs` to regenerate playbooks/README.md"


def test_the_guides_example_playbook_compiles(tmp_path):
    import re

    from flows.compiler import compile_file
    from infra.settings import SHIPPED_PLAYBOOKS, load_config

    example = re.search(r"```yaml\n(.*?)```", GUIDE.read_text(), re.S).group(1)
    (tmp_path / "templates").symlink_to(SHIPPED_PLAYBOOKS / "templates")
    path = tmp_path / "churn_winback.yaml"
    path.write_text(example)
    plan = compile_file(path, load_config())
    assert [s.name for s in plan.segments] == ["high_value", "mid_value", "everyone_else"]
    assert plan.follow_ups and plan.guardrails.budget and plan.experiment and plan.goal and plan.schedule
