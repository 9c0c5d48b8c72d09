"""Rendering: one entry per row, whatever the template or the row does; every attack that passed `check`
before ends as that message's failure, in bounded time, without the caller's memory growing."""

from __future__ import annotations

import datetime as dt
import os
import resource
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest

from infra.errors import DispatchError
from infra.settings import SHIPPED_PLAYBOOKS
from tasks.render import (MAX_MESSAGE_CHARS, RenderFailure, compiled, environment, render_batch, render_rows,
                          straight_bound)
from tasks.renderproc import Renderer, shared_renderer

ROW = {"first_name": "Ann", "reasons": ["no order for 94 days", "opens fell"], "points": 120,
       "offer": {"code": "VIP-1", "valid_days": 14}, "unsubscribe_url": "https://u.example/x"}


@pytest.fixture(scope="module")
def renderer():
    with Renderer(seconds=0.5) as r:
        yield r


def reasons(out):
    return [o.reason if isinstance(o, RenderFailure) else o for o in out]


def test_one_entry_per_row_in_order_and_failures_do_not_raise():
    rows = [ROW, {"first_name": None}, {**ROW, "first_name": "Bo"}]
    out = render_rows("Hi {{ first_name or 'there' }}, {{ offer.code }}", rows)
    assert out[0] == "Hi Ann, VIP-1" and out[2] == "Hi Bo, VIP-1"
    assert isinstance(out[1], RenderFailure) and out[1].reason.startswith("render_error: UndefinedError")
    assert render_rows("{{ x }}", []) == []


def test_shipped_templates_are_straight_line_and_render_in_process():
    for path in sorted((SHIPPED_PLAYBOOKS / "templates").glob("*.j2")):
        source = path.read_text()
        assert compiled(source, path.name.endswith(".html.j2")).straight, path.name
    assert straight_bound(environment().parse("{% for r in reasons %}{{ r }}{% endfor %}")) is None
    assert straight_bound(environment().parse("{{ first_name|center(width) }}")) is None  # a width from a value


def test_html_templates_are_escaped_and_partials_load_by_name(renderer):
    partials = {"footer.txt.j2": "<a href=\"{{ unsubscribe_url }}\">stop</a>",
                "macros.txt.j2": "{% macro stars(n) %}{% for i in range(n) %}*{% endfor %}{% endmacro %}"}
    source = ("<p>{{ first_name }}</p>{% include 'footer.txt.j2' %}"
              "{% from 'macros.txt.j2' import stars %}{{ stars(2) }}")
    row = {**ROW, "first_name": "<b>Ann</b>"}
    out = render_rows(source, [row], html=True, partials=partials, renderer=renderer)
    assert out == ['<p>&lt;b&gt;Ann&lt;/b&gt;</p><a href="https://u.example/x">stop</a>**']
    # nothing outside the partials can be loaded, whatever the name
    out = render_rows("{% include '/etc/passwd' %}", [ROW], partials=partials, renderer=renderer)
    assert out[0].reason.startswith("render_error: TemplateNotFound")


ATTACKS = {
    "'a' * 10**9": "{{ 'a' * 10**9 }}",
    "'x' ~ 'x' doubled on 40 set lines": "{% set a = 'x' %}" + "{% set a = a ~ a %}\n" * 40 + "{{ a|length }}",
    "doubled in a namespace loop": "{% set ns = namespace(x='x') %}{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}"
                                   "{% endfor %}{{ ns.x|length }}",
    "nested range loops, no output": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested range loops, output": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "loops over a big list built once": "{% set big = range(100000)|list %}{% for a in big %}{% for b in big %}"
                                        "{% endfor %}{% endfor %}",
    "a recursive macro": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "a branching macro": "{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(60) }}",
    "{% for %} inside a macro": "{% macro f() %}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                                "{% endfor %}{% endmacro %}{{ f() }}",
    "a huge |join": "{{ range(100000)|join('x' * 1000) }}",
    "a huge |list|string": "{% set l = range(100000)|list %}{{ (l|string) * 100 }}",
    "a huge |replace": "{{ ('a' * 60000)|replace('a', 'a' * 60000) }}",
    "a huge |wordwrap": "{{ ('a ' * 100000)|wordwrap(1, wrapstring='x' * 100) }}",
    "a huge |center": "{{ 'a'|center(10**9) }}",
    "a huge .center()": "{{ 'a'.center(10**9) }}",
    "a huge format width": "{{ '{:>1000000000}'.format(1) }}",
    "a huge % width": "{{ '%1000000000d' % 1 }}",
    "a huge power": "{{ 10 ** 1000000 }}",
    "squaring in a loop": "{% set ns = namespace(x=2) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}"
                          "{% endfor %}{{ ns.x }}",
    "many big texts kept": "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}"
                           "{% set ns.l = ns.l + [('x' * 200000) ~ i] %}{% endfor %}{{ ns.l|length }}",
    "attribute of internals": "{{ first_name.__class__.__mro__ }}",
    "format on a value": "{{ first_name % 3 }}",
}


@pytest.mark.parametrize("source", list(ATTACKS.values()), ids=list(ATTACKS))
def test_every_attack_is_that_message_s_failure_in_bounded_time_and_memory(source, renderer):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    out = render_rows(source, [ROW, ROW], renderer=renderer)
    elapsed = time.monotonic() - start
    assert len(out) == 2 and all(isinstance(o, RenderFailure) for o in out), reasons(out)
    assert all(o.reason.split(":")[0] in ("render_error", "render_timeout", "too_long") for o in out), reasons(out)
    assert elapsed < 2 * (0.5 + 2.0) + 1, elapsed  # two messages, each at most the limit plus the watchdog's grace
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: the caller stays small
    assert render_rows("ok {{ first_name }}{% for r in reasons %}.{% endfor %}", [ROW], renderer=renderer) == ["ok Ann.."]


def test_a_message_over_the_limit_is_too_long_with_its_length(renderer):
    out = render_rows("{% for i in range(70212) %}x{% endfor %}", [ROW], renderer=renderer)
    assert reasons(out) == [f"too_long: 70,212 characters, the limit is {MAX_MESSAGE_CHARS:,}"]
    short = render_rows("{{ first_name }}", [ROW], max_chars=2)
    assert reasons(short) == ["too_long: 3 characters, the limit is 2"]


def test_reasons_carry_no_customer_data(renderer):
    secret = {"first_name": "Zhang Wei 13800138000"}
    for source in ("{{ first_name|int(default=None) + 1 }}", "{{ 1 / (first_name|length - 21) }}",
                   "{% for c in first_name %}{{ c + 1 }}{% endfor %}"):
        for out in (render_rows(source, [secret]), render_rows(source, [secret], renderer=renderer)):
            assert isinstance(out[0], RenderFailure) and "Zhang" not in out[0].reason and "138" not in out[0].reason, out


def test_a_template_that_keeps_timing_out_is_not_tried_on_the_rest(renderer):
    hang = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    start = time.monotonic()
    out = reasons(render_rows(hang, [ROW] * 50, name="hang.txt.j2", renderer=renderer))
    assert time.monotonic() - start < 10
    assert out[:3] == ["render_timeout: over 0.5 s"] * 3
    assert set(out[3:]) == {"render_timeout: not tried, hang.txt.j2 ran over 0.5 s on 3 messages before"}


def _busy(ms: int) -> str:  # a template that takes about `ms` milliseconds per message
    return "{% for i in range(" + str(ms * 200) + ") %}{% for j in range(25) %}{% endfor %}{% endfor %}done"


def test_a_stuck_renderer_is_killed_and_restarted_and_the_rest_render(renderer):
    """A child that stops answering (here: stopped with SIGSTOP, as if stuck in one C-level operation)."""
    render_rows(_busy(1), [ROW], renderer=renderer)
    starts, pid = renderer.starts, renderer.pid
    timer = threading.Timer(0.2, os.kill, (pid, signal.SIGSTOP))
    timer.start()
    out = reasons(render_rows(_busy(60), [ROW] * 20, renderer=renderer))
    timer.join()
    stuck = [i for i, o in enumerate(out) if o != "done"]
    assert len(stuck) == 1 and out[stuck[0]].startswith("render_timeout: over 0.5 s (the renderer was stopped"), out
    assert renderer.starts == starts + 1 and renderer.pid != pid


def test_a_renderer_that_dies_is_replaced(renderer):
    render_rows(_busy(1), [ROW], renderer=renderer)
    pid = renderer.pid
    timer = threading.Timer(0.2, os.kill, (pid, signal.SIGKILL))
    timer.start()
    out = reasons(render_rows(_busy(60), [ROW] * 20, renderer=renderer))
    timer.join()
    dead = [o for o in out if o != "done"]
    assert dead == ["render_error: the renderer process ended (over its memory limit?)"], out


def test_threads_take_turns_on_the_shared_renderer():
    shared = shared_renderer()
    results: dict[int, list] = {}

    def work(k: int) -> None:
        rows = [{"first_name": f"n{k}-{i}", "reasons": []} for i in range(300)]
        results[k] = render_rows("{{ first_name }}{% for r in reasons %}{{ r }}{% endfor %}", rows)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[k] == [f"n{k}-{i}" for i in range(300)] for k in range(4))
    assert shared is shared_renderer()


def test_frame_values_reach_the_helper_process_as_they_print_here(renderer):
    frame = pd.DataFrame({"points": np.array([3], dtype="int64"), "churn_score": np.array([0.25]),
                          "seen": [pd.Timestamp("2026-05-01 10:00")], "first_name": ["Ann"]})
    row = frame.astype(object).to_dict("records")[0] | {"when": dt.date(2026, 5, 1)}
    source = "{{ points }} {{ churn_score }} {{ seen }} {{ when }}{% for c in first_name %}{% endfor %}"
    assert render_rows(source, [row], renderer=renderer) == ["3 0.25 2026-05-01 10:00:00 2026-05-01"]


def test_render_batch_still_raises_at_the_first_failure():
    assert render_batch("Hi {{ first_name }}", [ROW]) == ["Hi Ann"]
    with pytest.raises(DispatchError) as err:
        render_batch("{{ first_name.__class__.__mro__ }}", [ROW], name="sneaky.txt.j2")
    assert err.value.code == "L601" and "sneaky.txt.j2" in err.value.message


def test_a_template_that_does_not_compile_fails_every_message_instead_of_raising():
    out = render_rows("{{ first_name | rnd }}", [ROW, ROW])
    assert reasons(out) == ["render_error: the template does not compile: TemplateAssertionError"] * 2


def test_a_name_from_the_row_never_reaches_the_reason(renderer):
    row = {**ROW, "first_name": "Zhang Wei"}
    for source in ("{{ offer[first_name] }}", "{{ offer[first_name].x }}", "{% for r in reasons %}{{ offer[first_name] }}"
                   "{% endfor %}", "{{ offer['_' ~ first_name] }}"):
        for out in (render_rows(source, [row]), render_rows(source, [row], renderer=renderer)):
            assert isinstance(out[0], RenderFailure) and "Zhang" not in out[0].reason, out
    out = render_rows("{{ offer.nope }}", [row])
    assert out[0].reason == "render_error: UndefinedError: 'dict object' has no attribute 'nope' (line 1)"


def test_failures_across_many_chunks_stay_with_their_rows(renderer):
    hang = ("{% if first_name == 'hang' %}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
            "{% endfor %}{% endif %}{{ first_name }}{% for r in reasons %}{% endfor %}")
    rows = [{"first_name": "hang" if i in (2500, 4100) else f"n{i}", "reasons": []} for i in range(5000)]
    out = reasons(render_rows(hang, rows, renderer=renderer))
    assert [i for i, o in enumerate(out) if o != f"n{i}"] == [2500, 4100]
    assert out[2500] == out[4100] == "render_timeout: over 0.5 s"
