"""Load YAML keeping source positions, so an error can point at `file:line:col` with a caret.

PyYAML's compose step gives every node a start mark; we walk the node tree once, build plain Python
data and a map from key path (tuple of keys / list indexes) to the position of that value. The same
walk finds duplicate keys, which PyYAML would silently resolve to the last one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.errors import AuthorError

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Position:
    line: int  # 1-based
    col: int  # 1-based


@dataclass(frozen=True)
class SourceDoc:
    """A YAML document: its data, where each value came from, and the text for carets."""

    path: Path
    text: str
    data: Any
    positions: dict[KeyPath, Position]
    key_positions: dict[KeyPath, Position]
    problems: list[str] = field(default_factory=list)  # found while loading (duplicate keys)

    def locate(self, key_path: KeyPath) -> Position:
        """Best position for a key path: the key itself, else the value, else the nearest parent."""
        for n in range(len(key_path), -1, -1):
            prefix = tuple(key_path[:n])
            if prefix in self.key_positions:
                return self.key_positions[prefix]
            if prefix in self.positions:
                return self.positions[prefix]
        return Position(1, 1)

    def inside_value(self, key_path: KeyPath, offset: int) -> Position:
        """The position `offset` characters into a one-line scalar value (skipping an opening quote)."""
        pos = self.positions.get(key_path)
        if pos is None:
            return self.locate(key_path)
        lines = self.text.splitlines()
        line = lines[pos.line - 1] if pos.line <= len(lines) else ""
        quoted = pos.col - 1 < len(line) and line[pos.col - 1] in "'\""
        col = pos.col + (1 if quoted else 0) + max(offset, 0)
        return Position(pos.line, min(col, len(line) + 1) if line else col)

    def excerpt(self, pos: Position) -> str:
        """The source line with a caret under the column, ready to print."""
        lines = self.text.splitlines()
        if not 1 <= pos.line <= len(lines):
            return ""
        src = lines[pos.line - 1]
        gutter = f"{pos.line:>4} | "
        return f"{gutter}{src}\n{' ' * (len(gutter) + pos.col - 1)}^"


def format_located(doc: SourceDoc, key_path: KeyPath, message: str, hint: str | None = None,
                   *, code: str, at: Position | None = None) -> str:
    """`path:line:col: error[CODE] message`, the line with a caret, and a hint: how every author error reads."""
    pos = at or doc.locate(key_path)
    where = f" (at {'.'.join(str(k) for k in key_path)})" if key_path else ""
    out = f"{doc.path}:{pos.line}:{pos.col}: error[{code}] {message}{where}"
    snippet = doc.excerpt(pos)
    if snippet:
        out += "\n" + snippet
    if hint:
        out += f"\n  hint: {hint}"
    return out


def position_key(problem: str) -> tuple[int, int]:
    """(line, col) of a formatted problem, for sorting a file's problems top to bottom."""
    match = re.match(r"^.*?:(\d+):(\d+): ", problem)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


# What a pydantic error type means to someone writing YAML.
_EXPECTED = {
    "dict_type": "expected a mapping (`key: value` lines)", "model_type": "expected a mapping (`key: value` lines)",
    "model_attributes_type": "expected a mapping (`key: value` lines)",
    "list_type": "expected a list (lines starting with `- `)", "tuple_type": "expected a list (lines starting with `- `)",
    "string_type": "expected text", "int_type": "expected a whole number", "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number", "float_type": "expected a number", "float_parsing": "expected a number",
    "bool_type": "expected true or false", "bool_parsing": "expected true or false",
}
_BOUNDS = {"greater_than_equal": ("at least", "ge"), "greater_than": ("more than", "gt"),
           "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}
PLAYBOOK_CODES = {"unknown": "L120", "missing": "L121", "value": "L122", "name": "L123"}


def data_prefix(data: Any, loc: KeyPath) -> KeyPath:
    """The longest prefix of a pydantic location that exists in the data (drops union branch names)."""
    node, kept = data, []
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            break
        kept.append(part)
    return tuple(kept)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validation_problems(doc: SourceDoc, exc, allowed_keys: Callable[[KeyPath], list[str]],
                        codes: Mapping[str, str] = PLAYBOOK_CODES) -> list[str]:
    """Pydantic validation errors as located messages (one per place); unknown keys get a did-you-mean."""
    problems, seen = [], set()
    for err in exc.errors():
        loc: KeyPath = tuple(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            allowed = allowed_keys(loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed keys here: {', '.join(allowed)}"
            problems.append(format_located(doc, loc, f"unknown key '{loc[-1]}'", hint, code=codes["unknown"]))
            continue
        if kind == "missing":
            where = data_prefix(doc.data, loc[:-1])
            if (where, "missing", loc[-1]) not in seen:
                seen.add((where, "missing", loc[-1]))
                problems.append(format_located(doc, where, f"missing required key '{loc[-1]}'",
                                               f"add `{loc[-1]}:` here", code=codes["missing"]))
            continue
        where = data_prefix(doc.data, loc)
        if where in seen:  # a union reports once per branch; one message per place is enough
            continue
        seen.add(where)
        if kind == "string_pattern_mismatch":
            problems.append(format_located(doc, where, f"'{err['input']}' is not a valid name",
                                           "use lower-case letters, digits and underscores, starting with a letter",
                                           code=codes["name"]))
            continue
        bound = _BOUNDS.get(kind)
        message = (f"must be {bound[0]} {err['ctx'][bound[1]]}" if bound and "ctx" in err
                   else _EXPECTED.get(kind, err["msg"].replace("Value error, ", "").replace(" after validation", "")))
        if kind in _EXPECTED or bound or not isinstance(err.get("input"), (dict, list)) and kind not in ("too_short", "too_long"):
            message += f", got {_shown(err.get('input'))}"
        problems.append(format_located(doc, where, message, code=codes["value"]))
    return problems


_FAST = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_NODES = 100_000  # a playbook is a screen or two; this stops alias bombs ("billion laughs")


def load_yaml(path: Path, *, kind: str = "file") -> SourceDoc:
    """Read and compose one YAML document; syntax errors become AuthorError with a position."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        raise AuthorError(f"{kind} not found: {path}", hint="check the path", code="L101") from None
    except UnicodeDecodeError as exc:
        raise AuthorError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})",
            hint="save the file as UTF-8",
            code="L102",
        ) from None
    return parse_yaml_text(text, path, kind=kind)


def _syntax_error(text: str, path: Path, exc: yaml.MarkedYAMLError) -> AuthorError:
    """A YAML syntax error pointed where the author must look: the tab, the unclosed bracket or quote."""
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = exc.problem or exc.context or "invalid YAML"
    code, hint = "L103", "fix the YAML syntax (indentation, quotes, ':')"
    lines = text.splitlines()
    indents = [lines[i][: len(lines[i]) - len(lines[i].lstrip())] for i in (line - 2, line - 1) if 0 <= i < len(lines)]
    context = exc.context or ""
    if "\t" in problem or any("\t" in ind for ind in indents):
        code, problem = "L104", "a tab in the indentation"
        hint = "YAML indents with spaces only: replace the tab with spaces (set your editor to insert spaces)"
        row = lines[line - 1] if 0 < line <= len(lines) else ""
        col = (row.find("\t") + 1) if "\t" in row else col
    elif exc.context_mark and ("flow sequence" in context or "flow mapping" in context):
        opener = "[" if "sequence" in context else "{"
        closer = "]" if opener == "[" else "}"
        line, col = exc.context_mark.line + 1, exc.context_mark.column + 1
        problem = f"the '{opener}' opened here is never closed"
        hint = f"close it with '{closer}' on the same line, or write one item per line starting with '- '"
    elif exc.context_mark and "quoted scalar" in context:
        line, col = exc.context_mark.line + 1, exc.context_mark.column + 1
        problem = "the quote opened here is never closed"
        hint = "end the text with the same quote character it starts with"
    doc = SourceDoc(path, text, None, {}, {})
    return AuthorError(f"invalid YAML in {path}", code=code,
                       problems=[format_located(doc, (), f"invalid YAML: {problem}", hint, code=code, at=Position(line, col))])


def parse_yaml_text(text: str, path: Path, *, kind: str = "file") -> SourceDoc:
    """Compose `text` and build data with positions; every failure is an AuthorError."""
    try:
        # libyaml composes ~5x faster; the pure-Python loader words syntax errors the same everywhere,
        # so it gets the second look whenever libyaml refuses the text.
        node = yaml.compose(text, Loader=_FAST)
    except yaml.YAMLError:
        node = None
    except RecursionError:
        node = None
    try:
        if node is None and text.strip():
            node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(text, path, exc) from None
    except yaml.YAMLError as exc:
        raise AuthorError(f"{path}: invalid YAML: {exc}", code="L103") from None
    except RecursionError:
        raise AuthorError(f"{path}: the YAML is nested too deeply", hint="a playbook needs a few levels at most",
                          code="L106") from None
    builder = _Builder()
    try:
        data = builder.build(node, ()) if node is not None else None
    except _TooBig as exc:
        raise AuthorError(f"{path}: {exc}", hint="a playbook is a screen or two of YAML; remove anchors/aliases "
                          "that repeat large parts", code="L106") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise AuthorError(f"{path}{where}: a value cannot be read: {getattr(exc, 'problem', None) or exc}",
                          hint="write plain text, numbers, lists and mappings", code="L103") from None
    doc = SourceDoc(path, text, data, builder.positions, builder.key_positions)
    for key_path, first, again in builder.duplicates:
        doc.problems.append(format_located(
            doc, key_path, f"duplicate key '{key_path[-1]}' (first written on line {first.line})",
            "YAML would silently keep only the last one: remove or merge one of them", code="L105", at=again))
    return doc


class _TooBig(Exception):
    pass


class _Builder:
    """One walk over the node tree: plain data, positions per key path, duplicate keys."""

    def __init__(self) -> None:
        self.positions: dict[KeyPath, Position] = {}
        self.key_positions: dict[KeyPath, Position] = {}
        self.duplicates: list[tuple[KeyPath, Position, Position]] = []
        self.count = 0
        self.open: set[int] = set()  # nodes being built: an alias to one of them is a cycle
        self.constructor = yaml.constructor.SafeConstructor()  # one per document: it caches what it built

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooBig(f"the document expands to more than {MAX_NODES:,} values")
        if id(node) in self.open:
            raise _TooBig("an alias refers to the collection that contains it")
        self.positions.setdefault(path, Position(node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            self.open.add(id(node))
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                # Complex keys (lists, maps) are never valid in our files; keep them printable.
                key = _scalar(self.constructor, key_node) if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.tag}>"
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    key = str(key)
                child = (*path, key)
                at = Position(key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                if key in out:
                    self.duplicates.append((child, self.key_positions[child], at))
                    continue  # keep the first: the error is reported, the rest of the file still checks
                self.key_positions[child] = at
                out[key] = self.build(value_node, child)
            self.open.discard(id(node))
            return out
        if isinstance(node, yaml.SequenceNode):
            self.open.add(id(node))
            items = [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            self.open.discard(id(node))
            return items
        return _scalar(self.constructor, node)


def _scalar(constructor: yaml.constructor.SafeConstructor, node: yaml.Node) -> Any:
    """A scalar's value by YAML's safe rules (ints, floats, dates, null, ...); never arbitrary objects."""
    return constructor.construct_object(node, deep=True)
