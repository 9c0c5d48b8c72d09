"""The one Jinja2 sandbox templates run in, for `check` and for sending alike, and the limits it holds them to.

Jinja's immutable sandbox (no Python internals, no changing lists and dicts), with strict undefined
variables, no loader but the playbook's own partials, and every way a template builds a value checked
before the value is built: binary operators (`call_binop`), method calls (`call`), filters (each one
wrapped), `~` (the code generator calls `bounded`), `str.format` and `%` format strings. A text or
list over MAX_VALUE_ITEMS, an integer over MAX_INT_BITS, a width over MAX_WIDTH is `TooBig`. A message
past its deadline (`_clock`, per thread) raises `RenderTimeout` at the next of these hooks.

Filters are context filters, which Jinja never folds into constants at compile time, and every binary
operator is intercepted, which Jinja does not fold either: compiling `'a' * 10**9` or
`'a'|center(10**9)` in `check` builds nothing. Pure: Jinja and the standard library only.
"""

from __future__ import annotations

import math
import operator
import re
import string
import threading
import time
from collections.abc import Mapping
from typing import Any

from jinja2 import BaseLoader, StrictUndefined, TemplateNotFound, nodes
from jinja2.compiler import CodeGenerator
from jinja2.defaults import DEFAULT_FILTERS
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg, pass_context

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
        bits = max(left.bit_length(), right.bit_length()) if isinstance(left, int) and isinstance(right, int) else 0
        if bits >= MAX_INT_BITS:
            raise _too_big("an integer", bits + 1, MAX_INT_BITS, " bits")
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
