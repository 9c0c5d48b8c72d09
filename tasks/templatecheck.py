"""What `lifecycle check` finds in one template's text, each with the template line (and column) it is on.

Pure: the template is parsed and compiled with `tasks.sandbox.environment()`, the sandbox sending uses,
so an unknown filter or a bad tag fails here and not at 3 a.m. Then what the sandbox would refuse, or
what would certainly fail, is refused before any message is rendered:

    L133 syntax, and anything Jinja raises while compiling      L146 include/import/extends of anything but
    L134 unknown variable (did-you-mean)                              a constant name inside templates/
    L135 reaching into Python internals (`__class__`)          L147 a filter templates may not use (`attr`)
    L145 unknown filter or test (did-you-mean over the sandbox) L148 format on a value not written in it
    L149 certain to fail or blow up (`'a' * 10**9`, a range over 100,000, a width over 1,000)
    L158 a template over 64 KiB

Whether included files exist and whether includes go round in a cycle (L156, L157) is the compiler's
part: it knows the templates/ folder.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateSyntaxError, nodes
from jinja2.exceptions import TemplateAssertionError
from jinja2.sandbox import MAX_RANGE

from tasks.render import OFFER_FIELDS, referenced, template_variables
from tasks.sandbox import (MAX_TEMPLATE_CHARS, MAX_VALUE_ITEMS, MAX_WIDTH, REFUSED_FILTERS, TooBig, _precheck_filter,
                           _precheck_method, bounded_binop, brace_widths, environment, percent_widths)

TAGS = ("autoescape", "block", "call", "elif", "else", "endautoescape", "endblock", "endcall", "endfilter",
        "endfor", "endif", "endmacro", "endraw", "endset", "endwith", "extends", "filter", "for", "from", "if",
        "import", "include", "macro", "raw", "set", "with")
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*")
_NUMBER_FILTERS = {"int", "float", "round", "abs", "length", "count", "sum", "wordcount", "filesizeformat"}
_TEXT_FILTERS = {"string", "lower", "upper", "title", "capitalize", "trim", "e", "escape", "striptags", "join",
                 "replace", "truncate", "center", "indent", "wordwrap", "urlencode", "safe", "format"}


@dataclass(frozen=True)
class TemplateProblem:
    code: str  # see the module docstring; L143 (offer on a tier without one) when asked with offer=False
    message: str
    hint: str | None = None
    line: int | None = None  # 1-based line in the template; None: the template as a whole
    col: int | None = None


def template_name_problem(name: str) -> str | None:
    """Why `name` cannot name a file inside templates/ (None when it can)."""
    if not name:
        return "names no file"
    if name.startswith("/") or "\\" in name or ":" in name:
        return "is an absolute path"
    if ".." in name.split("/"):
        return "leaves the templates/ folder (`..`)"
    if not _TEMPLATE_NAME.fullmatch(name):
        return "is not a plain file name (letters, digits, `_ . -`, folders with `/`)"
    return None


def references(source: str) -> list[tuple[str, int]]:
    """(name, line) of every template this one includes, imports or extends ('' for a computed name)."""
    try:
        ast = environment().parse(source)
    except Exception:  # noqa: BLE001 - a syntax error is reported by check_template
        return []
    return [(name, node.lineno) for name, node in referenced(ast)]


def check_template(source: str, allowed: Iterable[str], *, html: bool = False, offer: bool = False,
                   text_names: Iterable[str] = ()) -> list[TemplateProblem]:
    """Every problem with a template's own text (empty when it is fine). `allowed`: the variables it may
    read; `text_names`: those known to hold text (`%` on them is formatting, L148)."""
    check = _Check(source, set(allowed), html, offer, set(text_names))
    try:
        return check.run()
    except RecursionError:  # a tree too deep to walk: say so rather than crash `check`
        return [TemplateProblem("L133", "the template is nested too deeply to be checked",
                                "simplify it: fewer nested brackets, tags and expressions")]


class _Check:
    def __init__(self, source: str, allowed: set[str], html: bool, offer: bool, text_names: set[str]) -> None:
        self.source, self.allowed, self.html, self.offer, self.text_names = source, allowed, html, offer, text_names
        self.lines = source.splitlines()
        self.env = environment(html=html)
        self.problems: list[TemplateProblem] = []

    def add(self, code: str, message: str, hint: str | None, line: int | None, needle: str | None = None) -> None:
        problem = TemplateProblem(code, message, hint, line, self.col(line, needle))
        if problem not in self.problems:
            self.problems.append(problem)

    def col(self, line: int | None, needle: str | None) -> int | None:
        if not line or not 1 <= line <= len(self.lines):
            return None
        text = self.lines[line - 1]
        if needle:
            match = re.search(needle, text)
            if match:
                return match.start(match.lastindex or 0) + 1
        return len(text) - len(text.lstrip()) + 1

    def run(self) -> list[TemplateProblem]:
        if len(self.source) > MAX_TEMPLATE_CHARS:
            self.add("L158", f"the template is {len(self.source):,} characters, over the limit of "
                     f"{MAX_TEMPLATE_CHARS:,}", "a message is a few lines: move long text out, or split it", None)
            return self.problems
        try:
            ast = self.env.parse(self.source)
        except TemplateSyntaxError as exc:
            self.syntax(exc)
            return self.problems
        except Exception as exc:  # noqa: BLE001 - Jinja's parser recursing too deep, and the like
            what = "is nested too deeply to be read" if isinstance(exc, RecursionError) else \
                f"cannot be read ({type(exc).__name__})"
            self.add("L133", f"the template {what}", "simplify it: fewer nested brackets, tags and expressions", None)
            return self.problems
        self.filters_and_tests(ast)
        self.formats(ast)
        self.loads(ast)
        self.internals(ast)
        self.constants(ast)
        self.variables(ast)
        if not any(p.code in ("L145", "L147") for p in self.problems):  # compiling would stop at the first
            self.compile()
        return sorted(self.problems, key=lambda p: (p.line or 0, p.col or 0))

    # ---- each kind of problem ------------------------------------------------------------------

    def syntax(self, exc: TemplateSyntaxError) -> None:
        message, needle = exc.message or "invalid syntax", None
        hint = "check that every {{ has its }} and every {% its %}"
        unknown = re.match(r"Encountered unknown tag '([^']+)'", message)
        if unknown:
            tag = unknown.group(1)
            message, needle = f"unknown tag '{tag}'", r"\{%-?\s*(" + re.escape(tag) + r")\b"
            hint = _did_you_mean(tag, TAGS) or f"tags: {', '.join(t for t in TAGS if not t.startswith('end'))}"
        elif "unexpected end of template" in message:
            hint = "a block is not closed: add its {% end... %} tag"
        else:
            token = re.search(r"unexpected '(.+?)'", message)
            needle = r"(" + re.escape(token.group(1)) + r")" if token else None
        self.add("L133", f"template syntax error: {_first_sentence(message)}", hint, exc.lineno, needle)

    def filters_and_tests(self, ast: nodes.Template) -> None:
        for node in ast.find_all(nodes.Filter):
            self.filter_name(node.name, node.lineno, r"\|\s*(" + re.escape(node.name) + r")\b")
            if node.name in ("map", "select", "reject", "selectattr", "rejectattr"):
                self.higher_order(node)
        for node in ast.find_all(nodes.Test):
            if node.name not in self.env.tests:
                self.add("L145", f"unknown test '{node.name}'",
                         _did_you_mean(node.name, sorted(self.env.tests)) or _BUILTINS.format(kind="tests"),
                         node.lineno, r"\bis\s+(?:not\s+)?(" + re.escape(node.name) + r")\b")

    def filter_name(self, name: str, line: int, needle: str) -> None:
        if name in REFUSED_FILTERS:
            self.add("L147", f"the `{name}` filter is not allowed in templates: {REFUSED_FILTERS[name]}",
                     "read the field by its name, e.g. `offer.code`", line, needle)
        elif name not in self.env.filters:
            self.add("L145", f"unknown filter '{name}'",
                     _did_you_mean(name, sorted(self.env.filters)) or _BUILTINS.format(kind="filters"), line, needle)

    def higher_order(self, node: nodes.Filter) -> None:
        """`map('upper')`, `select('odd')`, `selectattr('x', 'eq', 1)`: the named filter or test must be allowed."""
        index = 1 if node.name in ("selectattr", "rejectattr") else 0
        if len(node.args) <= index:
            return
        arg = node.args[index]
        if not (isinstance(arg, nodes.Const) and isinstance(arg.value, str)):
            self.add("L147", f"`{node.name}` must name its filter or test in the template, not take it from a value",
                     f"write the name in quotes, e.g. {node.name}('upper')", node.lineno,
                     r"\|\s*(" + node.name + r")\b")
            return
        if node.name == "map":
            if arg.value == "format":
                self.add("L148", "`map('format')` formats values as format strings",
                         "format with a literal: \"%s, \"|format(x)", node.lineno, r"(format)")
            else:
                self.filter_name(arg.value, node.lineno, r"(" + re.escape(arg.value) + r")")
        elif arg.value not in self.env.tests:
            self.add("L145", f"unknown test '{arg.value}'",
                     _did_you_mean(arg.value, sorted(self.env.tests)) or _BUILTINS.format(kind="tests"), node.lineno,
                     r"(" + re.escape(arg.value) + r")")

    def formats(self, ast: nodes.Template) -> None:
        hint = "write the format string in the template, e.g. \"{:.0f} points\".format(points)"
        for node in ast.find_all(nodes.Filter):
            if node.name != "format" or node.node is None:
                continue
            if isinstance(node.node, nodes.Const) and isinstance(node.node.value, str):
                self.widths(percent_widths(node.node.value), node.lineno, r"\|\s*(format)\b")
            else:
                self.add("L148", "`|format` on a value: its text would be used as a format string",
                         "format a literal instead: \"%s off\"|format(x)", node.lineno, r"\|\s*(format)\b")
        for node in ast.find_all(nodes.Call):
            target = node.node
            if not (isinstance(target, nodes.Getattr) and target.attr in ("format", "format_map")):
                continue
            needle = r"\.(" + target.attr + r")\s*\("
            if not (isinstance(target.node, nodes.Const) and isinstance(target.node.value, str)):
                self.add("L148", f"`.{target.attr}()` on a value: its text would be used as a format string",
                         hint, node.lineno, needle)
                continue
            try:
                self.widths(brace_widths(target.node.value), node.lineno, needle)
            except ValueError as exc:
                self.add("L149", f"this format string cannot work: {exc}", "check its { and } pairs", node.lineno,
                         needle)
            if re.search(r"\{[^{}]*[.\[]_", target.node.value):
                self.add("L135", "the format string reaches into Python internals (`_...`), which templates may not do",
                         "name fields by their position or key: {0}, {name}", node.lineno,
                         r"(" + re.escape(target.node.value) + r")")
        for node in ast.find_all(nodes.Mod):
            if isinstance(node.left, nodes.Const) and isinstance(node.left.value, str):
                self.widths(percent_widths(node.left.value), node.lineno, r"(%)")
            elif self.is_text(node.left):
                self.add("L148", "`%` on a text value formats it: its text would be used as a format string",
                         "format a literal instead: \"%s off\" % x", node.lineno, r"(%)")

    def widths(self, widths: list[str], line: int, needle: str) -> None:
        for w in widths:
            if w == "*":
                self.add("L148", "a width or precision taken from a value (`*` or a nested {})",
                         "write the width in the format string, e.g. %5d or {:>5}", line, needle)
            elif int(w) > MAX_WIDTH:
                self.add("L149", f"a width or precision of {int(w):,} (the limit is {MAX_WIDTH:,})",
                         "widths pad a few characters: use a small number", line, needle)

    def is_text(self, node: nodes.Node) -> bool:
        if isinstance(node, nodes.Name):
            return node.name in self.text_names
        if isinstance(node, nodes.Concat):
            return True
        if isinstance(node, nodes.Filter):
            return node.name in _TEXT_FILTERS
        return False

    def loads(self, ast: nodes.Template) -> None:
        for name, node in referenced(ast):
            kind = {nodes.Include: "include", nodes.Import: "import", nodes.FromImport: "from",
                    nodes.Extends: "extends"}[type(node)]
            needle = r"\{%-?\s*(" + kind + r")\b"
            if not name:
                self.add("L146", f"`{kind}` must name its template in quotes, not compute it",
                         f"{{% {kind} 'footer.txt.j2' %}}, a file in templates/", node.lineno, needle)
                continue
            why = template_name_problem(name)
            if why:
                self.add("L146", f"`{kind} '{name}'`: the name {why}; templates load only files in templates/",
                         "name a file in the playbook's templates/ folder, e.g. 'footer.txt.j2'", node.lineno,
                         needle)

    def internals(self, ast: nodes.Template) -> None:
        hint = "templates may use: customer fields, features, offer, segment, playbook, unsubscribe_url"
        for node in ast.find_all(nodes.Getattr):
            if node.attr.startswith("_"):
                self.add("L135", f"'{node.attr}' reaches into Python internals, which templates may not do", hint,
                         node.lineno, r"\.\s*(" + re.escape(node.attr) + r")\b")
            elif isinstance(node.node, nodes.Name) and node.node.name == "offer" and node.attr not in OFFER_FIELDS:
                close = difflib.get_close_matches(node.attr, list(OFFER_FIELDS), n=1)
                self.add("L134", f"unknown variable 'offer.{node.attr}'",
                         f"did you mean 'offer.{close[0]}'?" if close else f"offers have {', '.join(OFFER_FIELDS)}",
                         node.lineno, r"offer\.(" + re.escape(node.attr) + r")\b")
        for node in ast.find_all(nodes.Getitem):
            if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str) and node.arg.value.startswith("_"):
                self.add("L135", f"'{node.arg.value}' reaches into Python internals, which templates may not do",
                         hint, node.lineno, r"\[\s*['\"](" + re.escape(node.arg.value) + r")")

    def constants(self, ast: nodes.Template) -> None:
        """What is certain to fail or blow up whatever the customer: constant arithmetic over the limits,
        `range()` over MAX_RANGE, filter and method arguments over them."""
        hint = "a message needs small numbers: this would fail for every customer"
        fails = "this fails for every customer: fix the expression"
        consts = _Consts()

        def builds(what: str, exc: Exception) -> str:
            return f"{what} would be too big: {exc}"

        for node in ast.find_all(nodes.BinExpr):
            if isinstance(node, nodes.Mod) and isinstance(node.left, nodes.Const):
                continue  # a format string: its widths are checked with the other formats
            needle = r"(" + re.escape(node.operator) + r")"
            try:
                consts.value(node)
            except TooBig as exc:
                self.add("L149", builds("this expression", exc), hint, node.lineno, needle)
            except (ArithmeticError, TypeError, ValueError) as exc:
                self.add("L149", f"this expression fails: {type(exc).__name__}: {_first_sentence(str(exc))}", fails,
                         node.lineno, needle)
            except Exception:  # noqa: BLE001 - not constant: the customer's values decide
                pass
        for node in ast.find_all(nodes.Call):
            args = consts.values(node.args)
            if args is None or node.kwargs or node.dyn_args or node.dyn_kwargs:
                continue
            if isinstance(node.node, nodes.Name) and node.node.name == "range":
                try:
                    size = len(range(*args))
                except (TypeError, ValueError, OverflowError):
                    continue
                if size > MAX_RANGE:
                    self.add("L149", f"range() of {size:,} numbers (the limit is {MAX_RANGE:,})", hint, node.lineno,
                             r"\b(range)\s*\(")
            elif isinstance(node.node, nodes.Getattr) and not node.node.attr.startswith("_"):
                owner = consts.values([node.node.node])
                method = getattr(owner[0], node.node.attr, None) if owner and isinstance(owner[0], str) else None
                try:
                    if method is not None:
                        _precheck_method(method, tuple(args), {})
                except TooBig as exc:
                    self.add("L149", builds("this call", exc), hint, node.lineno,
                             r"\.(" + re.escape(node.node.attr) + r")\b")
                except Exception:  # noqa: BLE001 - the arguments do not fit: render time will say
                    pass
        for node in ast.find_all(nodes.Filter):
            args = consts.values(node.args)
            kwargs = consts.values([kw.value for kw in node.kwargs])
            if args is None or kwargs is None or node.dyn_args or node.dyn_kwargs:
                continue
            value = consts.values([node.node]) if node.node is not None else [""]
            try:
                _precheck_filter(node.name, value[0] if value else None, tuple(args),
                                 {kw.key: v for kw, v in zip(node.kwargs, kwargs)})
            except TooBig as exc:
                self.add("L149", builds(f"`{node.name}`", exc), hint, node.lineno,
                         r"\|\s*(" + re.escape(node.name) + r")\b")
            except Exception:  # noqa: BLE001 - the arguments do not fit: render time will say
                pass

    def variables(self, ast: nodes.Template) -> None:
        allowed = self.allowed | ({"offer"} if self.offer else set())
        names = template_variables(self.source)
        for name in sorted(names - allowed):
            line = next((n.lineno for n in ast.find_all(nodes.Name) if n.name == name), None)
            needle = r"\b(" + re.escape(name) + r")\b"
            if name == "offer":
                self.add("L143", "uses `offer`, but this tier has no offer",
                         "give this tier an `offer:`, or drop offer from the template", line, needle)
                continue
            close = difflib.get_close_matches(name, sorted(self.allowed), n=1)
            self.add("L134", f"unknown variable '{name}'",
                     f"did you mean '{close[0]}'?" if close else
                     "templates may use: customer fields, features, offer, segment, playbook, unsubscribe_url",
                     line, needle)

    def compile(self) -> None:
        """Compile as sending will (a fresh parse: Jinja's optimizer rewrites the tree it compiles)."""
        try:
            self.env.compile(self.source)
        except TemplateAssertionError as exc:
            self.add("L133", f"template error: {_first_sentence(exc.message or str(exc))}",
                     "see the author's guide (playbooks/README.md, Templates)", exc.lineno)
        except TemplateSyntaxError as exc:
            self.syntax(exc)
        except Exception as exc:  # noqa: BLE001 - Python refusing the generated code (too deeply nested), ...
            why = exc.msg if isinstance(exc, SyntaxError) else "it is nested too deeply" if isinstance(
                exc, RecursionError) else type(exc).__name__
            self.add("L133", f"the template cannot be compiled: {_first_sentence(str(why))}",
                     "simplify it: at most 20 blocks ({% for %}, {% if %}, ...) inside each other", None)


_BUILTINS = ("templates may use Jinja's built-in {kind} (https://jinja.palletsprojects.com/en/stable/templates/"
             "#builtin-{kind}), except attr")


class _NotConst(Exception):
    pass


class _Consts:
    """Values of constant expressions, each node computed once with the sandbox's bounded operators
    (TooBig before anything big is built), so checking stays linear in the template's size."""

    def __init__(self) -> None:
        self.memo: dict[int, tuple[bool, Any]] = {}

    KEEP = 4096  # longer values are not kept (a template of many of them must not fill the memory of `check`)

    def value(self, node: nodes.Node) -> Any:
        key = id(node)
        if key not in self.memo:
            try:
                value = self._compute(node)
                self.memo[key] = (True, value) if not _long(value, self.KEEP) else (False, _NotConst())
            except Exception as exc:  # noqa: BLE001 - kept and raised again for every parent
                self.memo[key] = (False, exc)
        ok, value = self.memo[key]
        if not ok:
            raise value
        return value

    def _compute(self, node: nodes.Node) -> Any:
        if isinstance(node, nodes.Const):
            return node.value
        if isinstance(node, (nodes.And, nodes.Or)):
            left = self.value(node.left)
            if isinstance(node, nodes.And):
                return left and self.value(node.right)
            return left or self.value(node.right)
        if isinstance(node, nodes.BinExpr):
            return bounded_binop(node.operator, self.value(node.left), self.value(node.right))
        if isinstance(node, nodes.Neg):
            return -self.value(node.node)
        if isinstance(node, nodes.Pos):
            return +self.value(node.node)
        if isinstance(node, nodes.Concat):
            parts = [str(self.value(part)) for part in node.nodes]
            total = sum(map(len, parts))
            if total > MAX_VALUE_ITEMS:  # each part is within the limit: their sum is bounded too
                raise TooBig(f"a joined text of {total:,} characters (the limit is {MAX_VALUE_ITEMS:,})")
            return "".join(parts)
        raise _NotConst

    def values(self, exprs: list[nodes.Expr]) -> list[Any] | None:
        try:
            return [self.value(e) for e in exprs]
        except Exception:  # noqa: BLE001 - not constant, or failing: nothing to say about the call
            return None


def _long(value: Any, limit: int) -> bool:
    return isinstance(value, (str, bytes, list, tuple)) and len(value) > limit


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 160 else text[:157] + "..."


def _did_you_mean(name: str, choices: Iterable[str]) -> str | None:
    choices = list(choices)
    swapped = [c for c in choices if sorted(c) == sorted(name) and c != name]  # two letters swapped: `fro`
    close = swapped[:1] or difflib.get_close_matches(name, choices, n=1)
    return f"did you mean '{close[0]}'?" if close else None
