"""Load YAML keeping source positions, so an error can point at `file:line:col` with a caret.

PyYAML's compose step gives every node a start mark; we walk the node tree once, build plain Python
data and a map from key path (tuple of keys / list indexes) to the position of that value.
"""

from __future__ import annotations

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

    def excerpt(self, pos: Position) -> str:
        """The source line with a caret under the column, ready to print."""
        lines = self.text.splitlines()
        if not 1 <= pos.line <= len(lines):
            return ""
        src = lines[pos.line - 1]
        gutter = f"{pos.line:>4} | "
        return f"{gutter}{src}\n{' ' * (len(gutter) + pos.col - 1)}^"


def format_located(doc: SourceDoc, key_path: KeyPath, message: str, hint: str | None = None) -> str:
    """`file:line:col: message`, the line with a caret, and a hint: how every author error reads."""
    pos = doc.locate(key_path)
    dotted = ".".join(str(k) for k in key_path) or "(top level)"
    out = f"{doc.path}:{pos.line}:{pos.col}: {message} (at {dotted})"
    snippet = doc.excerpt(pos)
    if snippet:
        out += "\n" + snippet
    if hint:
        out += f"\n  hint: {hint}"
    return out


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
