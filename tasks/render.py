"""Message rendering in one Jinja2 sandbox with strict undefined variables, bounded in time and size.

Pure (no Prefect, no database): `lifecycle check` compiles every template with `environment()`, the
same factory sending renders with, so what `check` accepts is what a send runs. Dispatch calls
`render_rows`: one entry per row, the text or a `RenderFailure` with a short reason, never raising
for anything a row or the template does.

Where a message is rendered depends on what its template can do:

- a *straight-line* template (no loops, macros, calls, includes or `{% set %}`; filters from a list
  whose output grows at most a fixed factor over their input) does work bounded by its own text and
  the values it reads (`straight_bound`): it renders here, in the caller's thread;
- anything else renders in the helper process of `tasks/renderproc.py`, which limits its own memory
  (RLIMIT_AS), interrupts a message after `RENDER_SECONDS` (SIGALRM) and is killed and restarted by
  this side when it stops answering.

Both paths share the sandbox's own checks: binary operators, method calls, filters, `~` and format
strings refuse a text or list over `MAX_VALUE_ITEMS` (or an integer over `MAX_INT_BITS`) before
building it, and a message over `MAX_MESSAGE_CHARS` is that message's failure (`too_long`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import operator
import re
import string
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import BaseLoader, StrictUndefined, TemplateNotFound, meta, nodes
from jinja2.compiler import CodeGenerator
from jinja2.defaults import DEFAULT_FILTERS
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg, pass_context

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

# ---- limits (the author's guide, playbooks/README.md "Templates", states them) ------------------
MAX_TEMPLATE_CHARS = 64 * 1024  # a template (or partial) file's text
MAX_MESSAGE_CHARS = 65_536  # one rendered message; more is that touch's failure, `too_long`
RENDER_SECONDS = 1.0  # one message, in the helper process; more is `render_timeout`
RENDER_MEMORY_BYTES = 256 * 1024 * 1024  # what the helper process may allocate beyond its start
MAX_VALUE_ITEMS = 4 * MAX_MESSAGE_CHARS  # any text or list a template builds (characters or items)
MAX_INT_BITS = 65_536  # any integer a template builds (about 19,700 digits)
MAX_WIDTH = 1_000  # a width or precision in a format string, `center`, `indent`, `tojson`
MAX_SLICES = 10_000  # `slice(n)`
TIMEOUT_STRIKES = 3  # a template that runs out of time on this many messages of a batch is not tried on the rest

# Filters templates may not use at all (`check` refuses them, L147; the sandbox does not have them).
REFUSED_FILTERS = {"attr": "it reads any attribute by a name computed at send time"}
# Globals Jinja offers that messages have no use for (`lipsum` writes pages of text in a loop).
REFUSED_GLOBALS = ("lipsum",)


@dataclass(frozen=True)
class RenderFailure:
    """A message that could not be rendered; `reason` is short and carries no customer data."""

    reason: str  # "render_error: UndefinedError ...", "render_timeout: over 1 s", "too_long: 70,212 characters, ..."


class TooBig(Exception):
    """A value a template would build is over the limits; raised before building it."""


class RenderTimeout(BaseException):
    """The message ran out of time. A BaseException, so no `except Exception` inside Jinja swallows it."""


# ---- the sandbox ---------------------------------------------------------------------------------

_clock = threading.local()  # per thread: when the message being rendered here runs out of time


def _tick() -> None:
    if time.monotonic() > getattr(_clock, "deadline", math.inf):
        _clock.deadline = math.inf  # raised once per message, however the exception travels
        raise RenderTimeout


def _is_seq(value: Any) -> bool:
    return isinstance(value, (str, list, tuple, bytes))


def _too_big(what: str, size: int, limit: int = MAX_VALUE_ITEMS, unit: str = " characters or items") -> TooBig:
    return TooBig(f"{what} of {size:,}{unit} (the limit is {limit:,})")


def _bounded(value: Any) -> Any:
    """`value`, unless it is a text or list over MAX_VALUE_ITEMS (then TooBig)."""
    if _is_seq(value) and len(value) > MAX_VALUE_ITEMS:
        raise _too_big("a text or list", len(value))
    return value


_BINOPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
           "//": operator.floordiv, "%": operator.mod, "**": operator.pow}
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")
_FORMAT_SPEC = re.compile(r"(?:.?[<>=^])?[+\- ]?z?#?0?(\d+)?[_,]?(?:\.(\d+))?[a-zA-Z%]?")


def percent_widths(fmt: str) -> list[str]:
    """Widths and precisions written in a `%` format string ('*' for one taken from the values)."""
    return [w for m in _PERCENT_SPEC.finditer(fmt) for w in m.groups() if w]


def brace_widths(fmt: str) -> list[str]:
    """Widths and precisions in a `str.format` string ('*' for a nested `{}` one); ValueError if malformed."""
    out = []
    for _, field, spec, _ in string.Formatter().parse(fmt):
        if field is None or not spec:
            continue
        if "{" in spec:
            out.append("*")
            continue
        match = _FORMAT_SPEC.fullmatch(spec)
        out += [w for w in (match.groups() if match else ()) if w]
    return out


def _check_widths(widths: list[str]) -> None:
    for w in widths:
        if w == "*":
            raise TooBig("a width or precision taken from a value is not allowed")
        if int(w) > MAX_WIDTH:
            raise _too_big("a width or precision", int(w), MAX_WIDTH, "")


def bounded_binop(op: str, left: Any, right: Any) -> Any:
    """`left op right`, refusing (TooBig) a result over the limits before computing it."""
    if op == "*":
        if isinstance(right, int) and _is_seq(left) or isinstance(left, int) and _is_seq(right):
            seq, n = (left, right) if _is_seq(left) else (right, left)
            if len(seq) * max(n, 0) > MAX_VALUE_ITEMS:
                raise _too_big("a repeated text or list", len(seq) * n)
        elif isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise _too_big("an integer", left.bit_length() + right.bit_length(), MAX_INT_BITS, " bits")
    elif op == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            if right * left.bit_length() > MAX_INT_BITS:
                raise _too_big("a power", min(right, 10**12) * left.bit_length(), MAX_INT_BITS, " bits")
    elif op in ("+", "-"):
        if _is_seq(left) and _is_seq(right) and len(left) + len(right) > MAX_VALUE_ITEMS:
            raise _too_big("a joined text or list", len(left) + len(right))
        if isinstance(left, int) and isinstance(right, int) and max(left.bit_length(), right.bit_length()) >= MAX_INT_BITS:
            raise _too_big("an integer", max(left.bit_length(), right.bit_length()) + 1, MAX_INT_BITS, " bits")
    elif op == "%" and isinstance(left, str):
        _check_widths(percent_widths(left))
    return _bounded(_BINOPS[op](left, right))


def _int_arg(args: tuple, kwargs: dict, index: int, key: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(key, default)


def _precheck_filter(name: str, value: Any, args: tuple, kwargs: dict) -> None:
    """Refuse, before running it, a filter call whose output would be over the limits."""
    if name == "center":
        width = _int_arg(args, kwargs, 0, "width", 80)
        if isinstance(width, int) and width > MAX_VALUE_ITEMS:
            raise _too_big("a width", width, unit="")
    elif name == "indent":
        width = _int_arg(args, kwargs, 0, "width", 4)
        size = width if isinstance(width, int) else len(str(width))
        if size > MAX_WIDTH:
            raise _too_big("an indent", size, MAX_WIDTH, "")
    elif name == "replace" and isinstance(value, str):
        old, new = str(_int_arg(args, kwargs, 0, "old", "")), str(_int_arg(args, kwargs, 1, "new", ""))
        _check_replace(value, old, new)
    elif name == "join" and hasattr(value, "__len__"):
        sep = str(_int_arg(args, kwargs, 0, "d", ""))
        if max(len(value) - 1, 0) * len(sep) > MAX_VALUE_ITEMS:
            raise _too_big("a joined text", (len(value) - 1) * len(sep), unit=" characters")
    elif name == "wordwrap" and isinstance(value, str):
        wrap = _int_arg(args, kwargs, 3, "wrapstring", None) or "\n"
        if len(value) * len(str(wrap)) > MAX_VALUE_ITEMS:
            raise _too_big("a wrapped text", len(value) * len(str(wrap)), unit=" characters")
    elif name == "format" and isinstance(value, str):
        _check_widths(percent_widths(value))
    elif name == "slice":
        slices = _int_arg(args, kwargs, 0, "slices", 1)
        if isinstance(slices, int) and slices > MAX_SLICES:
            raise _too_big("a slice count", slices, MAX_SLICES, "")
    elif name == "tojson":
        indent = _int_arg(args, kwargs, 0, "indent", None)
        if isinstance(indent, int) and indent > MAX_WIDTH:
            raise _too_big("an indent", indent, MAX_WIDTH, "")


def _check_replace(text: str, old: str, new: str) -> None:
    hits = len(text) + 1 if old == "" else text.count(old)
    size = len(text) + hits * (len(new) - len(old))
    if size > MAX_VALUE_ITEMS:
        raise _too_big("a replaced text", size, unit=" characters")


def _precheck_method(obj: Any, args: tuple, kwargs: dict) -> None:
    """The same for the methods of text a template may call (`'x'.center(10**9)`)."""
    owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
    if not isinstance(owner, str):
        return
    if name in ("center", "ljust", "rjust", "zfill"):
        width = _int_arg(args, kwargs, 0, "width", 0)
        if isinstance(width, int) and width > MAX_VALUE_ITEMS:
            raise _too_big("a width", width, unit="")
    elif name == "expandtabs":
        size = owner.count("\t") * _int_arg(args, kwargs, 0, "tabsize", 8)
        if isinstance(size, int) and size > MAX_VALUE_ITEMS:
            raise _too_big("an expanded text", size, unit=" characters")
    elif name == "replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
        _check_replace(owner, args[0], args[1])
    elif name == "join" and args and hasattr(args[0], "__len__"):
        if max(len(args[0]) - 1, 0) * len(owner) > MAX_VALUE_ITEMS:
            raise _too_big("a joined text", (len(args[0]) - 1) * len(owner), unit=" characters")


def _wrap_filter(name: str, func: Any) -> Any:
    """The filter with the sandbox's limits, as a context filter: Jinja never folds a context filter
    into a constant at compile time, so `check` never runs `'a'|center(10**9)` while compiling."""
    pass_arg = _PassArg.from_obj(func)

    @pass_context
    def bounded_filter(context: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        _precheck_filter(name, value, args, kwargs)
        if pass_arg is _PassArg.context:
            out = func(context, value, *args, **kwargs)
        elif pass_arg is _PassArg.eval_context:
            out = func(context.eval_ctx, value, *args, **kwargs)
        elif pass_arg is _PassArg.environment:
            out = func(context.environment, value, *args, **kwargs)
        else:
            out = func(value, *args, **kwargs)
        return _bounded(out)

    bounded_filter.__name__ = f"bounded_{name}"
    return bounded_filter


FILTERS = {name: _wrap_filter(name, f) for name, f in DEFAULT_FILTERS.items() if name not in REFUSED_FILTERS}


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with `a ~ b` checked against the limits like the operators, and `x % y`
    told apart from `'literal %s' % y`: only a format string written in the template may format."""

    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:  # type: ignore[override]
        self.write("environment.bounded(")
        super().visit_Concat(node, frame)
        self.write(")")

    def visit_Mod(self, node: nodes.BinExpr, frame: Any) -> None:  # type: ignore[override]
        if isinstance(node.left, nodes.Const):
            return super().visit_Mod(node, frame)
        self.write(f"environment.call_binop(context, {_VALUE_MOD!r}, ")
        self.visit(node.left, frame)
        self.write(", ")
        self.visit(node.right, frame)
        self.write(")")
        return None


_VALUE_MOD = "%?"  # `%` whose left side is not a literal: arithmetic only


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with every operator, call, filter and `~` held to the limits."""

    intercepted_binops = frozenset(_BINOPS)  # also keeps `'a' * 10**9` from being folded at compile time
    code_generator_class = _BoundedCodeGenerator

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == _VALUE_MOD:
            if isinstance(left, str):
                raise SecurityError("`%` formats only a format string written in the template, not a value")
            operator = "%"
        return bounded_binop(operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _tick()
        _precheck_method(__obj, args, kwargs)
        return _bounded(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Any:
        """`'...'.format(...)`: Jinja's sandboxed formatter, after the widths are checked."""
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None

        def bounded_format(*args: Any, **kwargs: Any) -> str:
            _tick()
            _check_widths(brace_widths(value.__self__))
            return _bounded(wrapper(*args, **kwargs))

        return bounded_format

    def bounded(self, value: Any) -> Any:
        _tick()
        return _bounded(value)


class _Partials(BaseLoader):
    """The playbook's partials (`{% include 'footer.txt.j2' %}`), compiled once, looked up without a cache
    (Jinja's template cache takes a lock, which a timed-out message must never leave held)."""

    def __init__(self, env: Sandbox, partials: Mapping[str, str]) -> None:
        self.sources = dict(partials)
        self.compiled: dict[str, Any] = {}
        for name, source in self.sources.items():
            try:
                code = env.compile(source, name=name, filename=name)
            except Exception:  # noqa: BLE001 - a broken partial fails the messages that include it
                continue
            self.compiled[name] = env.template_class.from_code(env, code, env.make_globals(None), None)

    def get_source(self, environment: Any, template: str) -> tuple[str, str, Any]:
        if template not in self.sources:
            raise TemplateNotFound(template)
        return self.sources[template], template, lambda: True

    def load(self, environment: Any, name: str, globals: Any = None) -> Any:
        if name in self.compiled:
            return self.compiled[name]
        if name in self.sources:  # it did not compile: say why, as a render error
            environment.compile(self.sources[name], name=name, filename=name)
        raise TemplateNotFound(name)


def environment(*, html: bool = False, partials: Mapping[str, str] | None = None) -> Sandbox:
    """The one sandbox `check` compiles with and sending renders with; `partials` are what includes,
    imports and extends may name (nothing else can be loaded)."""
    env = Sandbox(undefined=StrictUndefined, autoescape=html, trim_blocks=True, keep_trailing_newline=False,
                  cache_size=0)
    env.filters = dict(FILTERS)
    for name in REFUSED_GLOBALS:
        env.globals.pop(name, None)
    env.loader = _Partials(env, partials or {})
    return env


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
