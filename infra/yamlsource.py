"""Load YAML keeping source positions, so an error can point at `file:line:col` with a caret.

PyYAML's compose step gives every node a start mark; we walk the node tree once, build plain Python
data and a map from key path (tuple of keys / list indexes) to the position of that value.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
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
                   *, at: Position | None = None) -> str:
    """`file:line:col: message`, the line with a caret, and a hint: how every author error reads."""
    pos = at or doc.locate(key_path)
    dotted = ".".join(str(k) for k in key_path) or "(top level)"
    out = f"{doc.path}:{pos.line}:{pos.col}: {message} (at {dotted})"
    snippet = doc.excerpt(pos)
    if snippet:
        out += "\n" + snippet
    if hint:
        out += f"\n  hint: {hint}"
    return out


def validation_problems(doc: SourceDoc, exc, allowed_keys: Callable[[KeyPath], list[str]]) -> list[str]:
    """Pydantic validation errors as located messages; unknown keys get a did-you-mean."""
    problems = []
    for err in exc.errors():
        loc: KeyPath = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = allowed_keys(loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed keys here: {', '.join(allowed)}"
            problems.append(format_located(doc, loc, f"unknown key '{loc[-1]}'", hint))
        elif err["type"] == "missing":
            problems.append(format_located(doc, loc[:-1], f"missing required key '{loc[-1]}'",
                                           f"add `{loc[-1]}:` here"))
        elif err["type"] == "string_pattern_mismatch":
            problems.append(format_located(doc, loc, f"'{err['input']}' is not a valid name",
                                           "use lower-case letters, digits and underscores, starting with a letter"))
        else:
            problems.append(format_located(doc, loc, err["msg"]))
    return problems


def load_yaml(path: Path, *, kind: str = "file") -> SourceDoc:
    """Read and compose one YAML document; syntax errors become AuthorError with a position."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AuthorError(f"{kind} not found: {path}", hint="check the path", code="L101") from None
    except UnicodeDecodeError as exc:
        raise AuthorError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})",
            hint="save the file as UTF-8",
            code="L102",
        ) from None
    return parse_yaml_text(text, path, kind=kind)


def parse_yaml_text(text: str, path: Path, *, kind: str = "file") -> SourceDoc:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        doc = SourceDoc(path, text, None, {}, {})
        problem = exc.problem or exc.context or "invalid YAML"
        msg = f"{path}:{line}:{col}: invalid YAML: {problem}"
        snippet = doc.excerpt(Position(line, col))
        if snippet:
            msg += "\n" + snippet
        raise AuthorError(msg + "\n  hint: fix the YAML syntax (indentation, quotes, ':')", code="L103") from None
    except yaml.YAMLError as exc:
        raise AuthorError(f"{path}: invalid YAML: {exc}", code="L103") from None
    positions: dict[KeyPath, Position] = {}
    key_positions: dict[KeyPath, Position] = {}
    data = _build(node, (), positions, key_positions) if node is not None else None
    return SourceDoc(path, text, data, positions, key_positions)


def _build(node: yaml.Node, path: KeyPath, positions: dict, key_positions: dict) -> Any:
    positions[path] = Position(node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            # Complex keys (lists, maps) are never valid in our files; keep them printable.
            key = _scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.tag}>"
            child = (*path, key if isinstance(key, (str, int)) else str(key))
            key_positions[child] = Position(key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _build(value_node, child, positions, key_positions)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), positions, key_positions) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()
