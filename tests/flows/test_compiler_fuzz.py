"""Whatever an author types, the loader and compiler answer with author errors, never a crash.

Arbitrary text (YAML-ish fragments, tabs, brackets, anchors) and arbitrary nested data dumped to
YAML, including random keys at every place a playbook has keys, must either compile or raise an
AuthorError subclass: that is what keeps `lifecycle check` from ever printing a traceback. The same
for template files (Jinja-ish text; random filters, tests and tags), whose accepted ones must then
render to a text or a RenderFailure per row.
"""

from __future__ import annotations

import atexit
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2.defaults import DEFAULT_FILTERS, DEFAULT_TESTS

from flows.compiler import compile_file
from flows.schema import allowed_keys
from infra.errors import AuthorError
from infra.settings import SHIPPED_PLAYBOOKS, load_config
from tasks.render import RenderFailure, compiled, partials_key, render_rows
from tasks.renderproc import Renderer

CONFIG = load_config()
FOLDER = Path(tempfile.mkdtemp(prefix="fuzz-"))
(FOLDER / "templates").symlink_to(SHIPPED_PLAYBOOKS / "templates")
FUZZ = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _compile(text: str) -> None:
    path = FOLDER / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        compile_file(path, CONFIG)
    except AuthorError as exc:
        assert exc.render()  # renders without raising, too


FRAGMENTS = st.sampled_from([
    "name: fuzz\n", "segments:\n", "  - name: a\n", "    when: ", "\"recency_days > 30\"\n", "    else: true\n",
    "    tiers:\n", "      - channel: sms\n", "        template: winback_sms.txt.j2\n", "\t", "[", "]", "{", "}",
    ": ", "- ", "&a ", "*a ", "!!python/object:os.system ", "? ", "'", "\"", "#", "\n", "audience: ", "null",
    "~", "1e999", "0x1F", "2026-01-01", "guardrails:\n  quiet_hours: {start: ", "variants: [", "offer: {",
    "schedule: {cron: \"", "* * * * *", "\"}", "{{ offer.code }}", "!!binary aGk=", "<<: *a\n", "---\n", "...\n",
])


@FUZZ
@given(st.lists(st.one_of(FRAGMENTS, st.text(max_size=12)), max_size=40))
def test_arbitrary_text_gives_author_errors_only(parts):
    _compile("".join(parts))


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
                    st.sampled_from(["recency_days > 30", "churn_score >= 0.6 and x", "sms", "push",
                                     "winback_sms.txt.j2", "0 10 * * *", "Asia/Shanghai", "order.placed", "21:00",
                                     "else", "true", "{{ offer.code }}"]))


def _value(depth: int = 0):
    if depth > 3:
        return SCALARS
    return st.one_of(SCALARS, st.lists(st.deferred(lambda: _value(depth + 1)), max_size=3),
                     st.dictionaries(st.text(max_size=10), st.deferred(lambda: _value(depth + 1)), max_size=3))


KEYS_AT = {
    (): allowed_keys(()), ("segments", 0): allowed_keys(("segments", 0)),
    ("segments", 0, "tiers", 0): allowed_keys(("segments", 0, "tiers", 0)),
    ("guardrails",): allowed_keys(("guardrails",)), ("follow_up", 0): allowed_keys(("follow_up", 0)),
}


@st.composite
def playbooks(draw):
    """A playbook-shaped mapping with real keys (some misspelt or extra) and arbitrary values."""
    def mapping(at: tuple) -> dict:
        keys = draw(st.lists(st.sampled_from(KEYS_AT[at]), max_size=len(KEYS_AT[at]), unique=True))
        out = {k: draw(_value()) for k in keys}
        out.update(draw(st.dictionaries(st.text(max_size=8), _value(), max_size=2)))
        return out

    doc = mapping(())
    tier = mapping(("segments", 0, "tiers", 0))
    segment = {**mapping(("segments", 0)), "tiers": draw(st.sampled_from([[tier], tier, [], None]))}
    doc["segments"] = draw(st.sampled_from([[segment], [segment, segment], segment, "x"]))
    if draw(st.booleans()):
        doc["guardrails"] = mapping(("guardrails",))
    if draw(st.booleans()):
        doc["follow_up"] = [{**mapping(("follow_up", 0)), "tiers": [tier]}]
    if draw(st.booleans()):
        doc["name"] = "fuzz"
    return doc


@FUZZ
@given(playbooks())
def test_arbitrary_playbook_shaped_data_gives_author_errors_only(data):
    _compile(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))


# ---- template text ------------------------------------------------------------------------------
# Whatever a template file holds, `check` answers with author errors (exit 2) or compiles it; and what it
# compiles renders at send time to a text or a RenderFailure per row, never an exception.

TEMPLATES = Path(tempfile.mkdtemp(prefix="fuzz-templates-"))
(TEMPLATES / "templates").mkdir()
(TEMPLATES / "templates" / "part.txt.j2").write_text("{{ first_name }}{% macro m(x) %}[{{ x }}]{% endmacro %}")
(TEMPLATES / "fuzz.yaml").write_text(
    "name: fuzz\nmodel: none\nsegments:\n  - name: a\n    else: true\n    tiers:\n"
    "      - {channel: sms, template: fuzz.txt.j2, offer: {coupon_pool: p, unit_cost: 1}}\n"
    "      - {channel: email, template: fuzz.html.j2}\n")
(TEMPLATES / "templates" / "fuzz.html.j2").write_text("{{ unsubscribe_url }}{% include 'fuzz.txt.j2' ignore missing %}")
RENDERER = Renderer(seconds=0.2)
atexit.register(RENDERER.close)
ROWS = [{"first_name": "Ann", "points": 3, "reasons": ["a", "b"], "recency_days": None, "unsubscribe_url": "u",
         "offer": {"code": "C", "valid_days": 7, "unit_cost": 1.0, "currency": "CNY", "coupon_pool": "p"}}, {}]


def _check_and_render(text: str) -> None:
    (TEMPLATES / "templates" / "fuzz.txt.j2").write_text(text, encoding="utf-8")
    try:
        plan = compile_file(TEMPLATES / "fuzz.yaml", CONFIG)
    except AuthorError as exc:
        assert exc.exit_code == 2 and exc.render()
        return
    for tier in plan.segments[0].tiers:
        out = render_rows(tier.body, ROWS, html=tier.html, partials=plan.partials, renderer=RENDERER)
        assert len(out) == len(ROWS) and all(isinstance(o, (str, RenderFailure)) for o in out)
        if compiled(tier.body, tier.html, partials_key(plan.partials)).straight:  # in-process too
            assert [o if isinstance(o, str) else o.reason.split(":")[0] for o in render_rows(
                tier.body, ROWS, html=tier.html, partials=plan.partials)] == [
                o if isinstance(o, str) else o.reason.split(":")[0] for o in out]


JINJA = st.sampled_from([
    "{{", "}}", "{%", "%}", "{#", "#}", "{%-", "-%}", " ", "\n", "'", '"', "(", ")", "[", "]", ",", ".", "|", "~",
    "*", "**", "+", "-", "/", "%", "=", "==", "<", " and ", " or ", " not ", " is ", " in ", "if", "else", "elif",
    "endif", "for x in", "endfor", "set", "endset", "macro m(a)", "endmacro", "call", "endcall", "filter upper",
    "endfilter", "raw", "endraw", "block b", "endblock", "with", "endwith", "include", "import", "from", "extends",
    "'part.txt.j2'", "'fuzz.txt.j2'", "'missing.j2'", "'/etc/passwd'", "'../x.j2'", "as p", "import m",
    "first_name", "points", "reasons", "offer", "offer.code", "recency_days", "loop.index", "x", "m(1)", "p.m(2)",
    "upper", "rnd", "attr('__class__')", "format", "format(1)", "center(1000000000)", "join('x')", "replace('a','b')",
    "list", "string", "wordwrap(2)", "default('y')", "length", "int", "round", "map('upper')", "select('odd')",
    "odd", "defined", "divisibleby(0)", "range(100000)", "range(10)", "10**9", "'a'", "'%s'", "'{}'.format(x)",
    "__class__", "_x", "namespace(a=1)", "lipsum()", "dict(a=1)", "caller()", "0", "1", "-1", "1.5", "None", "true",
])


@FUZZ
@given(st.lists(st.one_of(JINJA, st.text(max_size=6)), max_size=40))
def test_arbitrary_template_text_gives_author_errors_or_renders(parts):
    _check_and_render("".join(parts))


NAMES = ["first_name", "points", "reasons", "offer.code", "recency_days", "frist_name", "x"]
FILTER_NAMES = sorted(DEFAULT_FILTERS) + ["rnd", "bogus"]
TEST_NAMES = sorted(DEFAULT_TESTS) + ["odd1"]


@st.composite
def expression(draw, depth: int = 0):
    """A well-formed Jinja expression with random names, filters (with arguments), tests and operators."""
    atoms = st.one_of(st.sampled_from(NAMES), st.integers(-3, 10**6).map(str),
                      st.text(alphabet="ab %{}_", max_size=5).map(repr), st.sampled_from(["range(5)", "[1, 2]"]))
    if depth > 2 or draw(st.booleans()):
        return draw(atoms)
    inner = draw(expression(depth + 1))
    kind = draw(st.sampled_from(["filter", "test", "binop", "call", "attr", "paren"]))
    if kind == "filter":
        args = draw(st.lists(expression(depth + 1), max_size=2))
        return f"{inner}|{draw(st.sampled_from(FILTER_NAMES))}" + (f"({', '.join(args)})" if args else "")
    if kind == "test":
        return f"{inner} is {draw(st.sampled_from(TEST_NAMES))}"
    if kind == "binop":
        return f"{inner} {draw(st.sampled_from(['+', '-', '*', '/', '//', '%', '**', '~', 'and', 'or', '==']))} " \
               f"{draw(expression(depth + 1))}"
    if kind == "call":
        return f"{inner}.{draw(st.sampled_from(['format', 'upper', 'center', 'join', 'replace', 'split']))}" \
               f"({', '.join(draw(st.lists(expression(depth + 1), max_size=2)))})"
    if kind == "attr":
        return f"{inner}.{draw(st.sampled_from(['code', '__class__', 'x', 'real']))}"
    return f"({inner})"


@st.composite
def template(draw):
    """Statements around random expressions: output, if, for, set, macros, includes, imports."""
    parts = []
    for _ in range(draw(st.integers(1, 5))):
        e = draw(expression())
        loaded = draw(st.sampled_from(["'part.txt.j2'", "'nope.j2'", e]))
        kind = draw(st.sampled_from(["output", "if", "for", "set", "macro", "include", "import", "text"]))
        parts.append({
            "output": f"{{{{ {e} }}}}", "if": f"{{% if {e} %}}y{{% else %}}{{{{ {e} }}}}{{% endif %}}",
            "for": f"{{% for x in {e} %}}{{{{ loop.index }}}}{{% endfor %}}", "set": f"{{% set x = {e} %}}{{{{ x }}}}",
            "macro": f"{{% macro m(x) %}}{{{{ {e} }}}}{{% endmacro %}}{{{{ m(1) }}}}",
            "include": f"{{% include {loaded} %}}",
            "import": f"{{% from 'part.txt.j2' import m %}}{{{{ m({e}) }}}}", "text": draw(st.text(max_size=10)),
        }[kind])
    return "".join(parts)


@FUZZ
@given(template())
def test_random_filters_tests_and_tags_give_author_errors_or_render(text):
    _check_and_render(text)
