"""Bounded rendering (tasks/render.py, tasks/renderproc.py) against the unbounded render_batch of before,
measured in the same run on the same rows.

    .venv/bin/python tests/benchmarks/render_bench.py [--rows 100000]

Rows look like dispatch's: every feature column plus the message context (about 45 keys), an offer.
Three templates: a shipped one (straight-line: it renders in the caller's process), the same one
sent through the helper process anyway (what any template with a loop pays), and the shipped one
with a `{% for %}` over the churn reasons (helper process). Each line prints the old time, the new
time and new / old; the texts must be identical.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jinja2 import StrictUndefined  # noqa: E402
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

from infra.settings import SHIPPED_PLAYBOOKS  # noqa: E402
from tasks.catalog import FEATURES  # noqa: E402
from tasks.render import RenderFailure, coupon_code, render_rows, unsubscribe_url  # noqa: E402
from tasks.renderproc import Renderer  # noqa: E402


def old_render_batch(source: str, rows: list[dict], *, html: bool = False) -> list[str]:
    """render_batch as it was: the sandbox, compiled once, render() per row, no limits."""
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=html, trim_blocks=True,
                                        keep_trailing_newline=False)
    template = env.from_string(source)
    return [template.render(**row).strip() for row in rows]


def make_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        row = {f.name: (i % 97) * 1.5 if f.type == "number" else i % 400 for f in FEATURES}
        row.update(member_tier=["bronze", "silver", "gold", "diamond"][i % 4], timezone="Asia/Shanghai",
                   customer_id=f"c{i:07d}", first_name=None if i % 5 == 0 else f"Name{i}", advisor_id=f"a{i % 50}",
                   segment="high_value", playbook="churn_winback", channel="advisor", tier=0, variant=None,
                   churn_score=(i % 100) / 100, reasons=["no order for 94 days", "opens fell 60%"],
                   unsubscribe_url=unsubscribe_url(f"c{i:07d}", "advisor"),
                   offer={"coupon_pool": "winback_vip_20off", "unit_cost": 30.0, "currency": "CNY",
                          "valid_days": 14, "code": coupon_code("winback_vip_20off", f"k{i}")})
        rows.append(row)
    return rows


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    rows = make_rows(args.rows)
    shipped = (SHIPPED_PLAYBOOKS / "templates" / "winback_advisor.txt.j2").read_text()
    looped = shipped + "{% for r in reasons %} ({{ r }}){% endfor %}"
    print(f"{args.rows:,} rows of {len(rows[0])} keys; times in seconds")
    with Renderer() as renderer:
        render_rows(looped, rows[:10], renderer=renderer)  # start the helper process outside the timing
        cases = [("shipped winback_advisor (in-process)", shipped, {}),
                 ("shipped, through the helper process", shipped, {"renderer": renderer}),
                 ("with a {% for %} (helper process)", looped, {})]
        for label, source, kw in cases:
            old_s, old = timed(lambda: old_render_batch(source, rows))  # noqa: B023
            new_s, new = timed(lambda: render_rows(source, rows, **kw))  # noqa: B023
            failed = sum(isinstance(t, RenderFailure) for t in new)
            assert failed == 0 and new == old, f"{label}: {failed} failures, texts differ: {new != old}"
            print(f"{label:40s} old {old_s:6.2f}  new {new_s:6.2f}  new/old {new_s / old_s:5.2f}  "
                  f"({new_s / args.rows * 1e6:.1f} us per message)")


if __name__ == "__main__":
    main()
