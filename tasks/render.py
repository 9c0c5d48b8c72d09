"""Message rendering in one Jinja2 sandbox with strict undefined variables, bounded in time and size.

Pure (no Prefect, no database): `lifecycle check` compiles every template with `environment()` (from
tasks/sandbox.py, re-exported here), the same factory sending renders with, so what `check` accepts is
what a send runs. Dispatch calls `render_rows`: one entry per row, the text or a `RenderFailure` with a
short reason, never raising for anything a row or the template does.

Where a message is rendered depends on what its template can do:

- a *straight-line* template (no loops, macros, calls, includes or `{% set %}`; filters from a list
  whose output grows at most a fixed factor over their input) does work bounded by its own text and
  the values it reads (`straight_bound`): it renders here, in the caller's thread;
- anything else renders in the helper process of `tasks/renderproc.py`, which limits its own memory
  (RLIMIT_AS), interrupts a message after `RENDER_SECONDS` (SIGALRM) and is killed and restarted by
  this side when it stops answering.

Both paths share the sandbox's own checks (`tasks/sandbox.py`: binary operators, method calls, filters,
`~` and format strings refuse a text or list over `MAX_VALUE_ITEMS`, or an integer over `MAX_INT_BITS`,
before building it), and a message over `MAX_MESSAGE_CHARS` is that message's failure (`too_long`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateNotFound, meta, nodes
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError

from infra.errors import DispatchError
from tasks.sandbox import (MAX_MESSAGE_CHARS, MAX_TEMPLATE_CHARS, MAX_VALUE_ITEMS, RENDER_MEMORY_BYTES, RENDER_SECONDS,
                           RenderTimeout, Sandbox, TooBig, _clock, environment)

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
class RenderFailure:
    """A message that could not be rendered; `reason` is short and carries no customer data."""

    reason: str  # "render_error: UndefinedError ...", "render_timeout: over 1 s", "too_long: 70,212 characters, ..."


# ---- compiling, and what a template reads --------------------------------------------------------

PartialsKey = tuple[tuple[str, str], ...]


def partials_key(partials: Mapping[str, str] | None) -> PartialsKey:
    return tuple(sorted((partials or {}).items()))


def referenced(ast: nodes.Template) -> list[tuple[str, nodes.Node]]:
    """Templates a template loads: (constant name, node); a name that is not a constant string is ''."""
    out = []
    for node in ast.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
        target = node.template
        out.append((target.value if isinstance(target, nodes.Const) and isinstance(target.value, str) else "", node))
    return out


class _AnyName(dict):
    """Filters or tests by any name: finding the variables a template reads must not stop at an unknown filter
    (`check` reports that on its own)."""

    def __contains__(self, name: object) -> bool:
        return True

    def __missing__(self, name: str) -> Any:
        return _nothing

    def get(self, name: str, default: Any = None) -> Any:
        return self[name]


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


@functools.lru_cache(maxsize=1)
def _tracking_env() -> Sandbox:
    env = environment()
    env.filters, env.tests = _AnyName(env.filters), _AnyName(env.tests)
    return env


@functools.lru_cache(maxsize=256)
def _parsed(source: str) -> nodes.Template | None:
    """The template's tree for finding what it reads and loads (None when it does not parse)."""
    try:
        return _tracking_env().parse(source)
    except Exception:  # noqa: BLE001 - `check` reports it; here it only means "reads nothing"
        return None


def template_variables(source: str, partials: Mapping[str, str] | None = None) -> set[str]:
    """Top-level variables a template reads, with those of the partials it loads (empty when it does not parse)."""
    return set(_variables(source, partials_key(partials)))


@functools.lru_cache(maxsize=256)
def _variables(source: str, partials: PartialsKey) -> frozenset[str]:
    available, seen, todo, out = dict(partials), set(), [source], set()
    while todo:
        ast = _parsed(todo.pop())
        if ast is None:
            continue
        try:
            out |= meta.find_undeclared_variables(ast)
        except Exception:  # noqa: BLE001 - unknown filters and the like: `check` reports them
            pass
        for name, _ in referenced(ast):
            if name in available and name not in seen:
                seen.add(name)
                todo.append(available[name])
    return frozenset(out)


@dataclass(frozen=True)
class Compiled:
    """A template ready to render: the Jinja template (None when it cannot be compiled, with `error`),
    whether it is straight-line (rendered in the caller's process) and the variables it reads."""

    template: Any
    error: str | None
    straight: bool
    variables: frozenset[str]
    text: str = ""  # the template's and its partials' text: names in a reason must come from here


@functools.lru_cache(maxsize=128)
def compiled(source: str, html: bool, partials: PartialsKey = ()) -> Compiled:
    variables = _variables(source, partials)
    if len(source) > MAX_TEMPLATE_CHARS:
        return Compiled(None, f"render_error: the template is over {MAX_TEMPLATE_CHARS:,} characters", False,
                        variables)
    env = environment(html=html, partials=dict(partials))
    try:
        ast = env.parse(source)
        template = env.from_string(ast)
    except Exception as exc:  # noqa: BLE001 - every message of it fails, with the reason
        return Compiled(None, f"render_error: the template does not compile: {_safe(type(exc).__name__)}", False,
                        variables)
    return Compiled(template, None, straight_bound(ast) is not None, variables,
                    "\n".join([source, *(text for _, text in partials)]))


# ---- straight-line templates ---------------------------------------------------------------------

# Filters whose output is at most FACTOR x their input (+ their constant arguments); a template that uses
# others is not straight-line. Escaping grows a character to at most 6 (`&#34;`), url-encoding to 9.
_LINEAR_FILTERS = {
    "abs": 1, "capitalize": 1, "count": 0, "d": 1, "default": 1, "e": 6, "escape": 6, "first": 1, "float": 0,
    "forceescape": 6, "int": 0, "last": 1, "length": 0, "lower": 1, "round": 0, "safe": 1, "string": 6,
    "striptags": 1, "title": 1, "trim": 1, "truncate": 1, "upper": 1, "urlencode": 9, "wordcount": 0,
}
_NUMBER = 32  # characters a number (or a bool) prints as, at most
_STRAIGHT_NODES = (nodes.Template, nodes.Output, nodes.TemplateData, nodes.Const, nodes.Name, nodes.Getattr,
                   nodes.Getitem, nodes.Slice, nodes.If, nodes.CondExpr, nodes.And, nodes.Or, nodes.Not, nodes.Neg,
                   nodes.Pos, nodes.Compare, nodes.Operand, nodes.Concat, nodes.Filter, nodes.Test, nodes.BinExpr,
                   nodes.Tuple, nodes.List, nodes.Keyword, nodes.MarkSafe, nodes.MarkSafeIfAutoescape)
STRAIGHT_FACTOR = 256  # at most this many times the longest value a row holds ...
STRAIGHT_CONSTANT = MAX_VALUE_ITEMS  # ... plus this many characters, in everything a render builds


def straight_bound(ast: nodes.Template) -> tuple[int, int] | None:
    """(a, b): everything a straight-line template builds in one render is at most a*D + b characters, D the
    longest value of the row: each expression runs at most once (no loops, macros, includes), and the
    output is joined once and stripped once. None when the template is not straight-line, or when its
    bound is over STRAIGHT_FACTOR / STRAIGHT_CONSTANT."""
    total = [0, 0]

    def bound(node: nodes.Node) -> tuple[int, int]:
        if not isinstance(node, _STRAIGHT_NODES):
            raise _NotStraight
        kids = [bound(child) for child in node.iter_child_nodes()]
        a, b = sum(k[0] for k in kids), sum(k[1] for k in kids)
        if isinstance(node, nodes.Name):
            a, b = 1, 0
        elif isinstance(node, nodes.Const):
            a, b = 0, len(str(node.value)) + 2
        elif isinstance(node, nodes.TemplateData):
            a, b = 0, len(node.data)
        elif isinstance(node, (nodes.Getattr, nodes.Getitem)):
            a, b = max(a, 1), b + 64  # a part of a value, or a method's repr
        elif isinstance(node, (nodes.Compare, nodes.Test, nodes.Not, nodes.Neg, nodes.Pos)):
            a, b = 0, _NUMBER
        elif isinstance(node, (nodes.And, nodes.Or, nodes.CondExpr)):
            a, b = max(k[0] for k in kids), max(k[1] for k in kids)
        elif isinstance(node, nodes.Filter):
            factor = _LINEAR_FILTERS.get(node.name)
            if factor is None or node.node is None or node.dyn_args is not None or node.dyn_kwargs is not None:
                raise _NotStraight
            (va, vb), args = kids[0], kids[1:]
            a, b = (factor * va, factor * vb) if factor else (0, _NUMBER)
            a, b = a + sum(k[0] for k in args), b + sum(k[1] for k in args)  # a default, a truncation end
        elif isinstance(node, nodes.BinExpr):
            a, b = _binop_bound(node, kids)
        if isinstance(node, nodes.Expr):
            total[0] += a
            total[1] += b
        return a, b

    try:
        out = bound(ast)
    except _NotStraight:
        return None
    a, b = total[0] + 2 * out[0], total[1] + 2 * out[1]
    return (a, b) if a <= STRAIGHT_FACTOR and b <= STRAIGHT_CONSTANT else None


class _NotStraight(Exception):
    pass


def _binop_bound(node: nodes.BinExpr, kids: list[tuple[int, int]]) -> tuple[int, int]:
    (la, lb), (ra, rb) = kids
    if node.operator == "+":  # numbers, or two texts joined
        return la + ra, lb + rb + _NUMBER
    if node.operator == "*":  # numbers, or a text repeated a constant number of times
        for const, (a, b) in ((node.left, (ra, rb)), (node.right, (la, lb))):
            if isinstance(const, nodes.Const) and isinstance(const.value, (int, float)):
                n = abs(int(const.value)) if isinstance(const.value, int) else 0
                if n > STRAIGHT_FACTOR:
                    raise _NotStraight
                return n * a, n * b + _NUMBER
        raise _NotStraight
    if node.operator == "%" and isinstance(node.left, nodes.Const):
        raise _NotStraight  # a format string: widths, and values of any size
    return 0, 4_400 if node.operator == "**" else _NUMBER  # numbers only (a power prints at most 4,300 digits)


# ---- rendering -----------------------------------------------------------------------------------

_SAFE_MESSAGES = (UndefinedError, SecurityError, TooBig, ZeroDivisionError, RecursionError, TemplateNotFound)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_QUOTED = re.compile(r"'([^']*)'")


def _safe(text: str, limit: int = 160) -> str:
    text = _CONTROL.sub(" ", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failure_reason(exc: BaseException, known: str = "", *, seconds: float = RENDER_SECONDS) -> str:
    """A short reason for a message that failed: the exception's class, its message only for kinds that
    describe the template (with any quoted name that is not in `known`, the template's text, blanked:
    `offer[first_name]` must not put a name in the ledger), and the template line it happened on."""
    if isinstance(exc, RenderTimeout):
        return f"render_timeout: over {seconds:g} s"
    if isinstance(exc, MemoryError):
        return f"render_error: MemoryError (over the renderer's {RENDER_MEMORY_BYTES // 2**20} MiB)"
    text = f"render_error: {type(exc).__name__}"
    if isinstance(exc, _SAFE_MESSAGES) or type(exc) is TemplateError:
        text += ": " + _QUOTED.sub(lambda m: m.group(0) if _named(m.group(1), known) else "'...'", str(exc))
    line = _template_line(exc)
    return _safe(text, 200 - len(line)) + line


def _named(name: str, known: str) -> bool:
    """A quoted part of an exception's message that may be shown: a type ('dict object') or a name written
    in the template."""
    if re.fullmatch(r"\w+ object|NoneType|None", name):
        return True
    return bool(re.fullmatch(r"\w+", name)) and re.search(rf"\b{re.escape(name)}\b", known) is not None


def _template_line(exc: BaseException) -> str:
    """' (line N)' or ' (line N of partial.j2)' of the innermost template frame in the traceback."""
    where, tb = "", exc.__traceback__
    while tb is not None:
        tpl = tb.tb_frame.f_globals.get("__jinja_template__")
        if tpl is not None:
            try:
                line = tpl.get_corresponding_lineno(tb.tb_lineno)
            except Exception:  # noqa: BLE001 - no line is better than no reason
                line = None
            if line:
                where = f" (line {line}" + (f" of {tpl.name})" if tpl.name else ")")
        tb = tb.tb_next
    return where


def render_one(ready: Compiled, row: Mapping[str, Any], *, max_chars: int = MAX_MESSAGE_CHARS,
               seconds: float = RENDER_SECONDS) -> str | RenderFailure:
    """One message: its text (stripped), or why not. Stops taking output past 4x max_chars."""
    template = ready.template
    _clock.deadline = time.monotonic() + seconds
    try:
        parts, total, cap = [], 0, 4 * max_chars
        for chunk in template.root_render_func(template.new_context(row)):
            total += len(chunk)
            if total > cap:
                return RenderFailure(f"too_long: over {cap:,} characters, the limit is {max_chars:,}")
            parts.append(chunk)
        text = "".join(parts).strip()
    except (Exception, RenderTimeout) as exc:  # noqa: BLE001 - whatever the template does is this message's failure
        return RenderFailure(failure_reason(exc, ready.text, seconds=seconds))
    finally:
        _clock.deadline = math.inf
    if len(text) > max_chars:
        return RenderFailure(f"too_long: {len(text):,} characters, the limit is {max_chars:,}")
    return text


def render_rows(source: str, rows: Iterable[Mapping], *, html: bool = False, name: str = "message",
                partials: Mapping[str, str] | None = None, max_chars: int = MAX_MESSAGE_CHARS,
                renderer: Any = None) -> list[str | RenderFailure]:
    """Render one template for many customers: one entry per row, in order, the text or a RenderFailure.

    Never raises for what a row or the template does. Straight-line templates render here; the others
    in the helper process (`renderer`, default: this process's shared `tasks.renderproc.Renderer`, started
    on first use, closed at exit). Giving `renderer` sends every template there."""
    rows = list(rows)
    if not rows:
        return []
    ready = compiled(source, html, partials_key(partials))
    if ready.error:
        return [RenderFailure(ready.error)] * len(rows)
    if ready.straight and renderer is None:
        return [render_one(ready, row, max_chars=max_chars) for row in rows]
    if renderer is None:
        from tasks.renderproc import shared_renderer

        renderer = shared_renderer()
    return renderer.render(source, rows, html=html, name=name, partials=partials, max_chars=max_chars,
                           variables=ready.variables)


def render_batch(source: str, rows: Iterable[Mapping], *, html: bool = False, name: str = "message",
                 partials: Mapping[str, str] | None = None) -> list[str]:
    """render_rows, raising DispatchError L601 at the first message that failed (the callers of old)."""
    out = render_rows(source, rows, html=html, name=name, partials=partials)
    for text in out:
        if isinstance(text, RenderFailure):
            raise DispatchError(f"template {name} failed to render: {text.reason}",
                                hint="run `lifecycle check` on the playbook", code="L601")
    return out  # type: ignore[return-value]


# ---- message context helpers ---------------------------------------------------------------------

def coupon_code(pool: str, touch_key: str) -> str:
    """A stable code per touch, so a resent message carries the same coupon."""
    return f"{pool}-{hashlib.sha256(f'{pool}|{touch_key}'.encode()).hexdigest()[:8].upper()}"


def unsubscribe_url(customer_id: str, channel: str) -> str:
    """A one-click link; the token names customer and channel without showing the customer id."""
    token = hashlib.sha256(f"{customer_id}|{channel}".encode()).hexdigest()[:20]
    return f"{UNSUBSCRIBE_BASE}?t={token}&ch={channel}"
