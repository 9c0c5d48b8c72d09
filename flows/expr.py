"""The safe expression language of playbook rules, e.g. `churn_score >= 0.6 and member_tier in ['gold']`.

Text is parsed by `ast` in eval mode and only a whitelist of node types is accepted; nothing is ever
eval'd, exec'd or turned into SQL. `compile_expr` is pure (stdlib + the catalog): it type-checks
against the feature catalog and returns a JSON tree. `evaluate` runs that tree vectorised over the
feature table (pandas and numpy are imported only there).

Tree: leaves are {"feature": name, "type": catalog type} and {"const": value}; every other node is
{"op": name, "args": [...]}, and `in` / `not in` also carry "values": [constants].

Nulls read the way an author expects: every comparison with a null is false (`recency_days > 90`
and `recency_days != 90` are both false for a customer who never ordered), `not` of it is true,
`is null` / `is not null` test missingness, arithmetic with a null (or a division by zero) is null,
`coalesce` fills, and a null boolean counts as false.
"""

from __future__ import annotations

import ast
import datetime
import difflib
import io
import math
import operator
import tokenize
from collections.abc import Callable, Iterator, Mapping
from functools import reduce
from typing import TYPE_CHECKING, Any, Literal

from infra.errors import AuthorError
from tasks.catalog import BY_NAME, Feature

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

MAX_LENGTH = 2000
MAX_DEPTH = 50
MAX_INT = 2**53  # beyond this a float64 column cannot tell neighbouring integers apart
_SIMPLER = "split it into simpler rules"
_LIST_EXAMPLE = "e.g. member_tier in ['gold', 'diamond']"
_DAYS_HINT = "compare days instead, e.g. days_since(x) > 30"

Kind = Literal["number", "string", "boolean", "date"]
_KIND: dict[str, Kind] = {
    "number": "number", "integer": "number", "string": "string", "date": "date", "boolean": "boolean",
}
_NAMED_CONSTANTS = {"true": True, "false": False, "True": True, "False": False}
_COMPARE = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_ARITH = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Mod: "%"}
# name -> (min args, max args or None for "any number", what the call is for in messages)
_FUNCTIONS: dict[str, tuple[int, int | None, str]] = {
    "days_since": (1, 1, "days_since(date_feature)"),
    "abs": (1, 1, "abs(x)"),
    "min": (2, None, "min(a, b)"),
    "max": (2, None, "max(a, b)"),
    "coalesce": (2, None, "coalesce(x, default)"),
    "lower": (1, 1, "lower(text)"),
}
_REJECTED: dict[type, tuple[str, str | None]] = {
    ast.Attribute: ("attribute access (x.y)", "name a feature directly, e.g. recency_days"),
    ast.Subscript: ("indexing (x[...])", None),
    ast.Slice: ("slices (x[a:b])", None),
    ast.Lambda: ("lambda", None),
    ast.ListComp: ("comprehensions", None),
    ast.SetComp: ("comprehensions", None),
    ast.DictComp: ("comprehensions", None),
    ast.GeneratorExp: ("comprehensions", None),
    ast.JoinedStr: ("f-strings", "write plain text in quotes, e.g. 'gold'"),
    ast.FormattedValue: ("f-strings", "write plain text in quotes, e.g. 'gold'"),
    ast.NamedExpr: ("assignment (:=)", "use == to compare"),
    ast.Starred: ("starred arguments (*x)", None),
    ast.IfExp: ("if/else expressions", "combine conditions with and / or"),
    ast.Dict: ("dicts ({k: v})", None),
    ast.Set: ("sets ({...})", "write a list: member_tier in ['gold', 'diamond']"),
    ast.Await: ("await", None),
    ast.Yield: ("yield", None),
    ast.YieldFrom: ("yield", None),
}
_REJECTED_OPS: dict[type, tuple[str, str | None]] = {
    ast.Pow: ("the ** operator", "multiply instead, e.g. x * x"),
    ast.FloorDiv: ("the // operator", "use / (division by zero gives null)"),
    ast.MatMult: ("the @ operator", None),
    ast.BitAnd: ("the & operator", "use and"),
    ast.BitOr: ("the | operator", "use or"),
    ast.BitXor: ("the ^ operator", None),
    ast.LShift: ("the << operator", None),
    ast.RShift: ("the >> operator", None),
    ast.Invert: ("the ~ operator", "use not"),
}


class ExprError(AuthorError):
    """A rule expression an author wrote is wrong; `col` is 1-based within the expression text."""

    code = "L110"  # L111 when the rule names a feature that does not exist

    def __init__(self, message: str, col: int | None = None, hint: str | None = None, *,
                 code: str | None = None) -> None:
        super().__init__(message, hint=hint, code=code)
        self.col = col

    def render(self) -> str:
        """The message with its column, then the hint."""
        where = f" (column {self.col})" if self.col is not None else ""
        text = f"error[{self.code}]: {self.message}{where}"
        return text + (f"\n  hint: {self.hint}" if self.hint else "")


def compile_expr(text: str, features: Mapping[str, Feature] = BY_NAME) -> dict[str, Any]:
    """Parse, whitelist and type-check `text`; return its JSON tree (same text, same tree)."""
    return _Compiler(text, features).compile()


def features_used(tree: Mapping[str, Any]) -> set[str]:
    """Every feature a compiled tree reads, so a plan knows which columns it needs."""
    if "feature" in tree:
        return {tree["feature"]}
    return set().union(*(features_used(arg) for arg in tree.get("args", ())))


class _Compiler:
    """One compilation: the text (for columns and snippets) and the features it may name."""

    def __init__(self, text: str, features: Mapping[str, Feature]) -> None:
        self.features = features
        self.body = text.strip()
        self.lead = len(text) - len(text.lstrip())  # columns count from the original text

    def compile(self) -> dict[str, Any]:
        """Guard the size, parse, then walk the tree from the top, which must be true/false."""
        if not self.body:
            raise ExprError("the expression is empty", 1, "write a condition, e.g. recency_days > 90")
        if len(self.body) > MAX_LENGTH:
            raise ExprError(
                f"the expression is {len(self.body)} characters long; the limit is {MAX_LENGTH}",
                self.lead + MAX_LENGTH + 1,
                "split it into several rules or segments",
            )
        try:
            root = ast.parse(self.body, mode="eval")
        except SyntaxError as e:
            raise self._syntax_error(e) from None
        except (RecursionError, MemoryError):
            raise ExprError("the expression is nested too deeply", None, _SIMPLER) from None
        try:
            tree, kind = self.node(root.body, 0)
        except RecursionError:
            raise ExprError("the expression is nested too deeply", None, _SIMPLER) from None
        self.expect(root.body, kind, "boolean", "the whole expression")
        return tree

    def node(self, n: ast.AST, depth: int) -> tuple[dict[str, Any], Kind]:
        """Compile one whitelisted node into (tree, kind); anything else is an error naming it."""
        if depth > MAX_DEPTH:
            raise self.error(n, f"the expression is nested more than {MAX_DEPTH} levels deep", _SIMPLER)
        if isinstance(n, ast.BoolOp):
            op = "and" if isinstance(n.op, ast.And) else "or"
            return {"op": op, "args": [self.boolean(v, depth, f"`{op}`") for v in n.values]}, "boolean"
        if isinstance(n, ast.UnaryOp):
            return self.unary(n, depth)
        if isinstance(n, ast.BinOp):
            if type(n.op) not in _ARITH:
                raise self.rejected(n, *_REJECTED_OPS.get(type(n.op), (type(n.op).__name__, None)))
            op = _ARITH[type(n.op)]
            args = [self.number(side, depth, f"`{op}`") for side in (n.left, n.right)]
            return {"op": op, "args": args}, "number"
        if isinstance(n, ast.Compare):
            left, pieces = n.left, []
            for op, right in zip(n.ops, n.comparators):  # 30 <= x < 90 means 30 <= x and x < 90
                pieces.append(self.compare(left, op, right, n, depth))
                left = right
            return (pieces[0] if len(pieces) == 1 else {"op": "and", "args": pieces}), "boolean"
        if isinstance(n, ast.Constant):
            value, kind = self.constant(n)
            return {"const": value}, kind
        if isinstance(n, ast.Name):
            return self.name(n)
        if isinstance(n, ast.Call):
            return self.call(n, depth)
        if isinstance(n, (ast.List, ast.Tuple)):
            raise self.error(n, "a list can only follow `in` or `not in`", _LIST_EXAMPLE)
        raise self.rejected(n, *_REJECTED.get(type(n), (type(n).__name__, None)))

    def unary(self, n: ast.UnaryOp, depth: int) -> tuple[dict[str, Any], Kind]:
        """`not x`, `-x` (folded into the constant when x is a number) and a harmless `+x`."""
        if isinstance(n.op, ast.Not):
            return {"op": "not", "args": [self.boolean(n.operand, depth, "`not`")]}, "boolean"
        if isinstance(n.op, ast.Invert):
            raise self.rejected(n, *_REJECTED_OPS[ast.Invert])
        value = self.folded(n)
        if value is not None:
            return {"const": value}, "number"
        arg = self.number(n.operand, depth, "unary minus" if isinstance(n.op, ast.USub) else "unary plus")
        return ({"op": "neg", "args": [arg]} if isinstance(n.op, ast.USub) else arg), "number"

    def compare(
        self, left: ast.expr, op: ast.cmpop, right: ast.expr, whole: ast.Compare, depth: int
    ) -> dict[str, Any]:
        """One link of a comparison chain: `is [not] null`, `[not] in [...]`, or == != < <= > >=."""
        if isinstance(op, (ast.Is, ast.IsNot)):
            word = "is null" if isinstance(op, ast.Is) else "is not null"
            if _is_none(right):
                raise self.error(right, "None is not part of the language", f"write `x {word}`")
            if not _is_null(right):
                raise self.error(right, "`is` and `is not` only work with null", "use == or != to compare values")
            if _is_null(left):
                raise self.error(left, "null belongs on the right", f"write `x {word}`")
            return {"op": word, "args": [self.node(left, depth + 1)[0]]}
        if isinstance(op, (ast.In, ast.NotIn)):
            return self.membership(left, op, right, depth)
        for side in (left, right):
            if _is_null(side) or _is_none(side):
                word = "is null" if isinstance(op, ast.Eq) else "is not null"
                raise self.error(side, "compare with null using `is null` / `is not null`", f"write `x {word}`")
        symbol = _COMPARE[type(op)]
        (a, ka), (b, kb) = self.node(left, depth + 1), self.node(right, depth + 1)
        if ka != kb:
            hint = "put text in quotes, e.g. member_tier == 'gold'" if "string" in (ka, kb) else None
            hint = _DAYS_HINT if "date" in (ka, kb) else hint
            message = f"cannot compare {self.snippet(left)} ({ka}) with {self.snippet(right)} ({kb})"
            raise self.error(whole, message, hint)
        if ka == "date":
            raise self.error(whole, "dates cannot be compared directly", _DAYS_HINT)
        if ka == "boolean" and symbol not in ("==", "!="):
            raise self.error(whole, f"true/false values cannot be compared with {symbol}", "use == or !=")
        return {"op": symbol, "args": [a, b]}

    def membership(self, left: ast.expr, op: ast.cmpop, right: ast.expr, depth: int) -> dict[str, Any]:
        """`x in [constants]`: the list must be non-empty and of x's kind."""
        word = "in" if isinstance(op, ast.In) else "not in"
        if isinstance(right, ast.Set):
            raise self.rejected(right, *_REJECTED[ast.Set])
        if not isinstance(right, (ast.List, ast.Tuple)):
            raise self.error(right, f"`{word}` needs a list of values on the right", _LIST_EXAMPLE)
        if not right.elts:
            raise self.error(right, f"the list after `{word}` is empty", "list at least one value")
        arg, kind = self.node(left, depth + 1)
        if kind not in ("number", "string"):
            raise self.error(left, f"`{word}` works on numbers and text, but {self.snippet(left)} is {kind}")
        values = []
        for elt in right.elts:
            folded = self.folded(elt) if isinstance(elt, ast.UnaryOp) else None
            if folded is None and not isinstance(elt, ast.Constant):
                raise self.error(elt, f"the list after `{word}` may only hold constants", _LIST_EXAMPLE)
            value, vkind = (folded, "number") if folded is not None else self.constant(elt)  # type: ignore[arg-type]
            if vkind != kind:
                hint = "put text in quotes" if kind == "string" else "remove the quotes around numbers"
                message = f"{self.snippet(left)} is {_a(kind)} but the list holds {self.snippet(elt)} ({_a(vkind)})"
                raise self.error(elt, message, hint)
            values.append(value)
        return {"op": word, "args": [arg], "values": values}

    def constant(self, n: ast.Constant) -> tuple[Any, Kind]:
        """A literal: a finite number of sane size, text, or true/false; None points to `is null`."""
        value = n.value
        if isinstance(value, bool):
            return value, "boolean"
        if isinstance(value, (int, float)):
            if not math.isfinite(value) or abs(value) > MAX_INT:
                raise self.error(n, f"the number {self.snippet(n)} is too large")
            return value, "number"
        if isinstance(value, str):
            return value, "string"
        if value is None:
            raise self.error(n, "None is not part of the language", "write `x is null` or `x is not null`")
        raise self.error(n, f"{self.snippet(n)} is not a supported value", "use numbers, text in quotes, true or false")

    def folded(self, n: ast.UnaryOp) -> int | float | None:
        """-0.3 written as unary minus on a constant becomes the constant -0.3 (None otherwise)."""
        if not isinstance(n.op, (ast.USub, ast.UAdd)) or not isinstance(n.operand, ast.Constant):
            return None
        value, kind = self.constant(n.operand)
        if kind != "number":
            return None
        return -value if isinstance(n.op, ast.USub) else value

    def name(self, n: ast.Name) -> tuple[dict[str, Any], Kind]:
        """A feature from the catalog or true/false; typos get a suggestion."""
        if n.id in _NAMED_CONSTANTS:
            return {"const": _NAMED_CONSTANTS[n.id]}, "boolean"
        if n.id == "null":
            raise self.error(n, "null can only be tested with `is null` / `is not null`", "e.g. recency_days is null")
        if n.id in _FUNCTIONS:
            raise self.error(n, f"{n.id} is a function", f"call it: {_FUNCTIONS[n.id][2]}")
        feature = self.features.get(n.id)
        if feature is None:
            err = self.error(n, f"unknown feature '{n.id}'", _suggest(n.id, self.features))
            err.code = "L111"
            raise err
        return {"feature": feature.name, "type": feature.type}, _KIND[feature.type]

    def call(self, n: ast.Call, depth: int) -> tuple[dict[str, Any], Kind]:
        """One of the few named functions, positional arguments only, each argument type-checked."""
        if not isinstance(n.func, ast.Name):
            construct = _REJECTED.get(type(n.func), ("calling this", None))[0]
            raise self.error(n.func, f"only named functions can be called, not {construct}", _functions_hint())
        name = n.func.id
        if name not in _FUNCTIONS:
            what = "is a feature, not a function" if name in self.features else "is not a known function"
            raise self.error(n.func, f"'{name}' {what}", _functions_hint())
        low, high, usage = _FUNCTIONS[name]
        if n.keywords:
            raise self.rejected(n.keywords[0], "keyword arguments", f"pass arguments by position: {usage}")
        for a in n.args:
            if isinstance(a, ast.Starred):
                raise self.rejected(a, *_REJECTED[ast.Starred])
        if len(n.args) < low or (high is not None and len(n.args) > high):
            count = "1 argument" if high == 1 else f"{low} or more arguments"
            raise self.error(n, f"{name} takes {count}, got {len(n.args)}", f"write {usage}")
        if name == "days_since":
            return {"op": name, "args": [self.typed(n.args[0], "date", depth, name)]}, "number"
        if name == "lower":
            return {"op": name, "args": [self.typed(n.args[0], "string", depth, name)]}, "string"
        if name in ("abs", "min", "max"):
            return {"op": name, "args": [self.number(a, depth, name) for a in n.args]}, "number"
        first, kind = self.node(n.args[0], depth + 1)  # coalesce: every argument of the first one's kind
        return {"op": name, "args": [first] + [self.typed(a, kind, depth, name) for a in n.args[1:]]}, kind

    def typed(self, n: ast.expr, want: Kind, depth: int, where: str) -> dict[str, Any]:
        """Compile `n` and insist on one kind."""
        tree, kind = self.node(n, depth + 1)
        self.expect(n, kind, want, where)
        return tree

    def number(self, n: ast.expr, depth: int, where: str) -> dict[str, Any]:
        return self.typed(n, "number", depth, where)

    def boolean(self, n: ast.expr, depth: int, where: str) -> dict[str, Any]:
        return self.typed(n, "boolean", depth, where)

    def expect(self, n: ast.expr, kind: Kind, want: Kind, where: str) -> None:
        """Raise a type error that says where a value of the wrong kind was used."""
        if kind == want:
            return
        if want == "boolean":
            message = f"{where} needs true/false, but {self.snippet(n)} is {_a(kind)}"
            raise self.error(n, message, "compare it, e.g. recency_days > 90")
        hint = "remove the quotes around numbers" if want == "number" and kind == "string" else None
        raise self.error(n, f"{where} needs {_a(want)}, but {self.snippet(n)} is {_a(kind)}", hint)

    def snippet(self, n: ast.AST) -> str:
        """The source text of a node, quoted for messages."""
        return f"`{ast.get_source_segment(self.body, n) or type(n).__name__}`"

    def col(self, n: ast.AST) -> int:
        """1-based character column in the original text (ast counts UTF-8 bytes per line)."""
        lines = self.body.split("\n")
        lineno, offset = getattr(n, "lineno", 1), getattr(n, "col_offset", 0)
        before = sum(len(line) + 1 for line in lines[: lineno - 1])
        chars = len(lines[lineno - 1].encode()[:offset].decode("utf-8", "ignore"))
        return self.lead + before + chars + 1

    def error(self, n: ast.AST, message: str, hint: str | None = None) -> ExprError:
        return ExprError(message, self.col(n), hint)

    def rejected(self, n: ast.AST, construct: str, hint: str | None = None) -> ExprError:
        return self.error(n, f"playbook expressions do not allow {construct}", hint or _LANGUAGE_HINT)

    def _syntax_error(self, e: SyntaxError) -> ExprError:
        """Python's syntax error, re-pointed, with a hint for the usual slips (=, &&, AND, multi-line)."""
        lines = self.body.split("\n")
        lineno = min(max(e.lineno or 1, 1), len(lines))
        col = self.lead + sum(len(line) + 1 for line in lines[: lineno - 1]) + (e.offset or 1)
        hint, at = None, None
        for tok in _tokens(self.body):
            start = self.lead + sum(len(line) + 1 for line in lines[: tok.start[0] - 1]) + tok.start[1] + 1
            if tok.string == "=":
                hint, at = "use == to compare", start
            elif tok.string in ("&", "|", "!", "&&", "||"):
                hint, at = "use and / or / not", start
            elif tok.string in ("AND", "OR", "NOT"):
                hint, at = "write and / or / not in lowercase", start
            elif tok.string == "<>":
                hint, at = "use != to compare", start
            if hint:
                break
        if hint is None and "\n" in self.body:
            hint = "wrap a multi-line expression in parentheses, or use YAML's folded style (>)"
        return ExprError(f"invalid expression: {e.msg}", at or col, hint)


def _tokens(text: str) -> Iterator[tokenize.TokenInfo]:
    """Tokens of `text` as far as the tokenizer gets; used only to phrase syntax hints."""
    try:
        yield from tokenize.generate_tokens(io.StringIO(text).readline)
    except (tokenize.TokenError, SyntaxError):
        return


def _is_null(n: ast.AST) -> bool:
    return isinstance(n, ast.Name) and n.id == "null"


def _is_none(n: ast.AST) -> bool:
    return isinstance(n, ast.Constant) and n.value is None


def _a(kind: Kind) -> str:
    return {"number": "a number", "string": "text", "boolean": "true/false", "date": "a date"}[kind]


_USAGES = ", ".join(usage for _, _, usage in _FUNCTIONS.values())
_LANGUAGE_HINT = (
    f"use features, numbers, 'text', true/false, comparisons, in [...], is null, and/or/not, + - * / % and {_USAGES}"
)


def _functions_hint() -> str:
    return f"available functions: {_USAGES}"


def _suggest(name: str, features: Mapping[str, Feature]) -> str:
    """A 'did you mean' hint for a near match, else a few available features to choose from."""
    close = difflib.get_close_matches(name, list(features), n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    names = sorted(features)
    return "available features include " + ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


# ---- evaluation: (values, missing) numpy pairs, one per node, over the whole frame ----

_CMP: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}
_BIN: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "%": operator.mod,
}


def evaluate(tree: Mapping[str, Any], frame: pd.DataFrame, *, as_of: datetime.date | None = None) -> pd.Series:
    """Run a compiled tree over a feature table: one plain bool per row, aligned to frame.index.

    `days_since` counts days up to `as_of`, else `frame.attrs["as_of"]`.
    """
    import pandas as pd

    as_of = as_of if as_of is not None else frame.attrs.get("as_of")
    values, missing = _Evaluator(frame, as_of).run(tree)
    if values.dtype != bool:
        raise ValueError(f"expression tree gives {values.dtype} values, not true/false: {tree!r}")
    return pd.Series(values & ~missing, index=frame.index, dtype=bool)


class _Evaluator:
    """Evaluates nodes to (values, missing) arrays; missing values hold a placeholder (NaN, "", NaT)."""

    def __init__(self, frame: pd.DataFrame, as_of: Any) -> None:
        import numpy as np

        self.np = np
        self.frame = frame
        self.n = len(frame)
        self.as_of = as_of

    def run(self, node: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """One node over the whole frame; the compiler has already checked every kind."""
        np = self.np
        if "feature" in node:
            return self.feature(node["feature"], node.get("type", "number"))
        if "const" in node:
            value = node["const"]
            dtype = bool if isinstance(value, bool) else np.dtypes.StringDType() if isinstance(value, str) else float
            return np.full(self.n, value, dtype=dtype), np.zeros(self.n, dtype=bool)
        op, args = node["op"], node["args"]
        clear = np.zeros(self.n, dtype=bool)
        if op in ("and", "or"):
            truths = [self.truth(a) for a in args]
            return reduce(np.logical_and if op == "and" else np.logical_or, truths), clear
        if op == "not":
            return ~self.truth(args[0]), clear
        if op in ("is null", "is not null"):
            missing = self.run(args[0])[1]
            return (missing.copy() if op == "is null" else ~missing), clear
        if op in ("in", "not in"):
            values, missing = self.run(args[0])
            hits = reduce(np.logical_or, (values == v for v in node["values"]), clear)
            return (hits if op == "in" else ~hits) & ~missing, clear
        pairs = [self.run(a) for a in args]
        if op in _CMP:
            (a, ma), (b, mb) = pairs
            return np.asarray(_CMP[op](a, b), dtype=bool) & ~ma & ~mb, clear
        if op in _BIN or op in ("neg", "abs", "min", "max"):
            return self.arithmetic(op, pairs)
        if op == "coalesce":
            return reduce(lambda x, y: (np.where(x[1], y[0], x[0]), x[1] & y[1]), pairs)
        if op == "lower":
            return np.strings.lower(pairs[0][0]), pairs[0][1]
        if op == "days_since":
            return self.days_since(*pairs[0])
        raise ValueError(f"unknown operation {op!r} in expression tree")

    def truth(self, node: Mapping[str, Any]) -> np.ndarray:
        """Boolean context: a null counts as false."""
        values, missing = self.run(node)
        return values.astype(bool) & ~missing

    def arithmetic(self, op: str, pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """Numbers in, numbers out; a null operand, division by zero or overflow gives null."""
        np = self.np
        with np.errstate(all="ignore"):
            if op == "neg":
                result = -pairs[0][0]
            elif op == "abs":
                result = np.abs(pairs[0][0])
            elif op in ("min", "max"):
                result = reduce(np.minimum if op == "min" else np.maximum, (p[0] for p in pairs))
            else:
                result = _BIN[op](pairs[0][0], pairs[1][0])
        missing = reduce(np.logical_or, (p[1] for p in pairs)) | ~np.isfinite(result)
        result[missing] = np.nan
        return result, missing

    def days_since(self, dates: np.ndarray, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole days from each date up to as_of."""
        np = self.np
        if self.as_of is None:
            raise ValueError("days_since() needs an as-of date: pass as_of=... to evaluate() or set frame.attrs['as_of']")
        import pandas as pd

        as_of = np.datetime64(pd.Timestamp(self.as_of).date(), "D")
        days = (as_of - dates).astype("float64")
        days[missing] = np.nan
        return days, missing

    def feature(self, name: str, type_: str) -> tuple[np.ndarray, np.ndarray]:
        """One column as (values, missing), whatever pandas dtype it arrives in."""
        np = self.np
        import pandas as pd

        if name not in self.frame.columns:
            raise ValueError(f"the feature table has no column {name!r}; the features step must produce it")
        col = self.frame[name]
        missing = col.isna().to_numpy(dtype=bool)
        try:
            if _KIND[type_] == "number":
                values = col.to_numpy(dtype="float64", na_value=np.nan)
                return values, missing | np.isnan(values)
            if _KIND[type_] == "boolean":
                return col.to_numpy(dtype=bool, na_value=False), missing
            if _KIND[type_] == "string":
                return col.to_numpy(dtype=object, na_value="").astype(np.dtypes.StringDType()), missing
            dates = pd.to_datetime(col)
            if dates.dt.tz is not None:
                dates = dates.dt.tz_localize(None)
            return dates.to_numpy().astype("datetime64[D]"), missing
        except (TypeError, ValueError) as e:
            raise ValueError(f"column {name!r} ({col.dtype}) cannot be read as {type_}: {e}") from e
