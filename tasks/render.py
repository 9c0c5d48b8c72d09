"""Message rendering in a Jinja2 sandbox with strict undefined variables.

Pure (no Prefect): the compiler uses `check_template` so a typo fails `lifecycle check` and not a
send at 3 a.m.; dispatch uses `render_batch`. The sandbox refuses attribute access to Python
internals (`__class__`, `__mro__`, ...) both when checking and when rendering.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from infra.errors import DispatchError

# The message context: what every template may use besides the feature columns.
BASE_CONTEXT = {
    "customer_id": "the customer's id",
    "first_name": "first name (may be empty)",
    "advisor_id": "the customer's enterprise-chat advisor (may be empty)",
    "segment": "the segment the customer fell in",
    "playbook": "the playbook's name",
    "channel": "the channel this message goes out on",
    "tier": "the tier number within the segment (0 = first)",
    "variant": "the A/B variant name (empty without variants)",
    "churn_score": "churn probability (empty without a model)",
    "reasons": "reason codes: the features that pushed the churn score up most",
    "unsubscribe_url": "the customer's one-click unsubscribe link for this channel",
}
# `offer` exists only on tiers (or variants) with an offer; these are its fields.
OFFER_FIELDS = {
    "coupon_pool": "the pool the coupon comes from",
    "code": "the coupon code drawn for this customer",
    "unit_cost": "what the coupon costs when redeemed",
    "currency": "currency of unit_cost",
    "valid_days": "days the coupon is valid (may be empty)",
}
UNSUBSCRIBE_BASE = "https://example.com/unsubscribe"


@dataclass(frozen=True)
class TemplateProblem:
    code: str  # L133 syntax, L134 unknown variable, L135 internals, L143 offer on a tier without one
    message: str


def environment(*, html: bool = False) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=html, trim_blocks=True, keep_trailing_newline=False
    )


def template_variables(source: str) -> set[str]:
    """Top-level variables a template reads (empty when it does not parse)."""
    try:
        return meta.find_undeclared_variables(environment().parse(source))
    except TemplateSyntaxError:
        return set()


def check_template(source: str, allowed: Iterable[str], *, html: bool = False,
                   offer: bool = False) -> list[TemplateProblem]:
    """Problems with a template (syntax, unknown variables, internals); empty when it is fine."""
    env = environment(html=html)
    try:
        ast = env.parse(source)
    except TemplateSyntaxError as exc:
        return [TemplateProblem("L133", f"line {exc.lineno}: template syntax error: {exc.message}")]
    allowed = set(allowed) | ({"offer"} if offer else set())
    problems = []
    for name in sorted(meta.find_undeclared_variables(ast) - allowed):
        if name == "offer":
            problems.append(TemplateProblem("L143", "uses `offer`, but this tier has no offer"))
            continue
        close = difflib.get_close_matches(name, sorted(allowed), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        problems.append(TemplateProblem("L134", f"unknown variable '{name}'{hint}"))
    for node in ast.find_all((nodes.Getattr,)):
        if node.attr.startswith("_"):
            problems.append(TemplateProblem(
                "L135", f"line {node.lineno}: '{node.attr}' reaches into Python internals, which templates may not do"))
        elif isinstance(node.node, nodes.Name) and node.node.name == "offer" and node.attr not in OFFER_FIELDS:
            close = difflib.get_close_matches(node.attr, list(OFFER_FIELDS), n=1)
            hint = f"; did you mean 'offer.{close[0]}'?" if close else f"; offers have {', '.join(OFFER_FIELDS)}"
            problems.append(TemplateProblem("L134", f"line {node.lineno}: unknown variable 'offer.{node.attr}'{hint}"))
    for node in ast.find_all((nodes.Getitem,)):
        if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str) and node.arg.value.startswith("_"):
            problems.append(TemplateProblem(
                "L135", f"line {node.lineno}: '{node.arg.value}' reaches into Python internals, which templates may not do"))
    return problems


def coupon_code(pool: str, touch_key: str) -> str:
    """A stable code per touch, so a resent message carries the same coupon."""
    return f"{pool}-{hashlib.sha256(f'{pool}|{touch_key}'.encode()).hexdigest()[:8].upper()}"


def unsubscribe_url(customer_id: str, channel: str) -> str:
    """A one-click link; the token names customer and channel without showing the customer id."""
    token = hashlib.sha256(f"{customer_id}|{channel}".encode()).hexdigest()[:20]
    return f"{UNSUBSCRIBE_BASE}?t={token}&ch={channel}"


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
