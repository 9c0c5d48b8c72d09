"""Whatever an author types, the loader and compiler answer with author errors, never a crash.

Arbitrary text (YAML-ish fragments, tabs, brackets, anchors) and arbitrary nested data dumped to
YAML, including random keys at every place a playbook has keys, must either compile or raise an
AuthorError subclass: that is what keeps `lifecycle check` from ever printing a traceback.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.compiler import compile_file
from flows.schema import allowed_keys
from infra.errors import AuthorError
from infra.settings import SHIPPED_PLAYBOOKS, load_config

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
