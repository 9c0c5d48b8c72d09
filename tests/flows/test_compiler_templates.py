"""Templates through the compiler: every Jinja problem is an author error in the template's own file, collected
with the rest; partials travel in the plan and render the same at send time."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.compiler import PlaybookError, compile_file
from flows.plan import Plan
from infra.settings import SHIPPED_PLAYBOOKS, load_config
from tasks.render import RenderFailure, render_rows

LIFECYCLE = str(Path(sys.executable).with_name("lifecycle"))
CONFIG = SHIPPED_PLAYBOOKS.parent / "lifecycle.yaml"


def playbook(folder: Path, name: str, tiers: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\nmodel: none\nsegments:\n  - name: everyone\n    else: true\n    tiers:\n{tiers}")
    return path


def write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / "templates" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "templates" / name).write_text(text)


def problems(path: Path) -> list[str]:
    with pytest.raises(PlaybookError) as err:
        compile_file(path, load_config(CONFIG))
    return err.value.problems


def test_check_reports_a_template_error_in_one_file_and_goes_on_to_the_next(tmp_path):
    """Issue 17.1: an unknown filter was a 60-line traceback that stopped `check` (and `run --dry-run`)."""
    write(tmp_path, {"rnd.txt.j2": "Hi {{ first_name }}\n{{ recency_days | rnd }} days\n",
                     "ok.txt.j2": "Hi {{ first_name }}"})
    playbook(tmp_path, "first", "      - {channel: sms, template: rnd.txt.j2}\n")
    playbook(tmp_path, "second", "      - {channel: smss, template: ok.txt.j2}\n")
    r = subprocess.run([LIFECYCLE, "check", str(tmp_path), "--config", str(CONFIG)], capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in out, out
    assert f"{tmp_path / 'templates' / 'rnd.txt.j2'}:2:19: error[L145] unknown filter 'rnd'" in out
    assert "2 | {{ recency_days | rnd }} days" in out and "hint: did you mean 'round'?" in out
    assert f"{tmp_path / 'second.yaml'}:7:" in out and "error[L130] unknown channel 'smss'" in out
    dry = subprocess.run([LIFECYCLE, "run", str(tmp_path / "first.yaml"), "--dry-run", "--config", str(CONFIG)],
                         capture_output=True, text=True)
    assert dry.returncode == 2 and "Traceback" not in dry.stderr and "error[L145]" in dry.stderr, dry.stderr


def test_checking_never_builds_what_the_template_would(tmp_path):
    """`check` compiles templates; Jinja folds constants while compiling. Nothing big is built doing so."""
    write(tmp_path, {"big.txt.j2": "{{ 'a' * 10**9 }} {{ 'a'|center(1000000000) }} {{ 10 ** 10 ** 10 }}\n"
                                   "{{ ('ab' ~ 'cd') * 100000000 }} {{ 'x'.ljust(10**9) }} {{ 9 ** 9 ** 9 }}"})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    found = problems(playbook(tmp_path, "big", "      - {channel: push, template: big.txt.j2}\n"))
    assert time.monotonic() - start < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB
    codes = [p.split("error[")[1][:4] for p in found]
    assert codes.count("L149") >= 4, found


def test_partials_travel_in_the_plan_and_render_as_checked(tmp_path):
    write(tmp_path, {"mail.html.j2": "<p>{{ first_name }}</p>{% include 'parts/footer.html.j2' %}",
                     "parts/footer.html.j2": "<a href=\"{{ unsubscribe_url }}\">Unsubscribe</a> {{ offer.code }}"})
    tiers = ("      - channel: email\n        template: mail.html.j2\n"
             "        offer: {coupon_pool: p, unit_cost: 1}\n")
    path = playbook(tmp_path, "mail", tiers)
    plan = compile_file(path, load_config(CONFIG))  # the unsubscribe link in the footer counts (L138)
    assert plan.partials == {"parts/footer.html.j2": "<a href=\"{{ unsubscribe_url }}\">Unsubscribe</a> {{ offer.code }}"}
    assert Plan.from_json(plan.to_json()) == plan
    tier = plan.segments[0].tiers[0]
    out = render_rows(tier.body, [{"first_name": "<Ann>", "unsubscribe_url": "u", "offer": {"code": "C1"}}],
                      html=True, partials=plan.partials)
    assert out == ['<p>&lt;Ann&gt;</p><a href="u">Unsubscribe</a> C1']
    before = plan.plan_hash
    (tmp_path / "templates" / "parts" / "footer.html.j2").write_text("<a href=\"{{ unsubscribe_url }}\">Stop</a>")
    assert compile_file(path, load_config(CONFIG)).plan_hash != before
    # the offer the footer reads is the tier's business: without one it is L143 at the tier
    (tmp_path / "templates" / "parts" / "footer.html.j2").write_text("{{ unsubscribe_url }} {{ offer.code }}")
    found = problems(playbook(tmp_path, "mail", "      - {channel: email, template: mail.html.j2}\n"))
    assert [p.split("error[")[1][:4] for p in found] == ["L143"], found


def test_plans_without_partials_serialise_as_before(tmp_path):
    plan = compile_file(SHIPPED_PLAYBOOKS / "churn_winback.yaml", load_config(CONFIG))
    assert plan.partials == {} and "partials" not in json.loads(plan.to_json())
    assert "partials" not in plan.model_dump(mode="json")


def test_a_partial_is_checked_like_a_template_and_reported_once(tmp_path):
    write(tmp_path, {"a.txt.j2": "{% include 'p.txt.j2' %}", "b.txt.j2": "{% include 'p.txt.j2' %}",
                     "p.txt.j2": "{{ frist_name }} {{ first_name | attr('x') }}"})
    found = problems(playbook(tmp_path, "two", "      - {channel: sms, template: a.txt.j2}\n"
                                               "      - {channel: push, template: b.txt.j2}\n"))
    heads = [p.splitlines()[0] for p in found]
    assert heads == [f"{tmp_path / 'templates' / 'p.txt.j2'}:1:4: error[L134] unknown variable 'frist_name'",
                     f"{tmp_path / 'templates' / 'p.txt.j2'}:1:34: error[L147] the `attr` filter is not allowed in "
                     "templates: it reads any attribute by a name computed at send time"], heads


def test_what_check_accepts_renders_without_failing(tmp_path):
    """The other direction: a template with loops, macros and partials that check accepts renders at send time."""
    write(tmp_path, {"t.txt.j2": "{% import 'm.txt.j2' as m %}{{ m.greet(first_name) }}"
                                 "{% for r in reasons or [] %} {{ loop.index }}. {{ r|capitalize }}{% endfor %}"
                                 "{% set total = points * 2 %} {{ '%d points' % total }} {{ '{:.1f}'.format(churn_score) }}",
                     "m.txt.j2": "{% macro greet(name) %}Hi {{ name or 'there' }},{% endmacro %}"})
    plan = compile_file(playbook(tmp_path, "ok", "      - {channel: push, template: t.txt.j2}\n"), load_config(CONFIG))
    row = {"first_name": "Ann", "reasons": ["no order for 94 days"], "points": 21, "churn_score": 0.734}
    out = render_rows(plan.segments[0].tiers[0].body, [row], partials=plan.partials)
    assert out == ["Hi Ann, 1. No order for 94 days 42 points 0.7"], [o.reason if isinstance(o, RenderFailure) else o
                                                                       for o in out]
