"""Message rendering in a Jinja2 sandbox with strict undefined variables.

Pure (no Prefect): the compiler uses `check_template` so a typo fails `lifecycle check` and not a
send at 3 a.m.; dispatch uses `render_batch`. The sandbox refuses attribute access to Python
internals (`__class__`, `__mro__`, ...) both when checking and when rendering.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from infra.errors import AuthorError, DispatchError

# What every message may use besides the feature columns.
BASE_CONTEXT = ("customer_id", "first_name", "advisor_id", "segment", "playbook", "channel", "tier",
                "churn_score", "reasons")


def environment(*, html: bool = False) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=html, trim_blocks=True, keep_trailing_newline=False
    )


def check_template(source: str, allowed: Iterable[str], *, html: bool = False) -> list[str]:
    """Problems with a template (syntax, unknown variables, internals); empty when it is fine."""
    env = environment(html=html)
    try:
        ast = env.parse(source)
    except TemplateSyntaxError as exc:
        return [f"line {exc.lineno}: template syntax error: {exc.message}"]
    allowed = set(allowed)
    problems = []
    for name in sorted(meta.find_undeclared_variables(ast) - allowed):
        close = difflib.get_close_matches(name, sorted(allowed), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        problems.append(f"unknown variable '{name}'{hint}")
    for node in ast.find_all((nodes.Getattr,)):
        if node.attr.startswith("_"):
            problems.append(f"line {node.lineno}: '{node.attr}' reaches into Python internals, which templates may not do")
    for node in ast.find_all((nodes.Getitem,)):
        if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str) and node.arg.value.startswith("_"):
            problems.append(f"line {node.lineno}: '{node.arg.value}' reaches into Python internals, which templates may not do")
    return problems


def render_batch(source: str, rows: Iterable[Mapping], *, html: bool = False, name: str = "message") -> list[str]:
    """Render one template for many customers; compiled once, rendered per row."""
    env = environment(html=html)
    template = env.from_string(source)
    out = []
    for row in rows:
        try:
            out.append(template.render(**row).strip())
        except (UndefinedError, SecurityError) as exc:
            raise DispatchError(f"template {name} failed to render: {exc}",
                                hint="run `lifecycle check` on the playbook", code="L601") from None
    return out


def require_valid(source: str, allowed: Iterable[str], *, where: str, html: bool = False) -> None:
    problems = check_template(source, allowed, html=html)
    if problems:
        raise AuthorError(f"{where}: " + "; ".join(problems), code="L120")
