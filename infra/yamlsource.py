"""Load YAML keeping source positions, so an error can point at `file:line:col` with a caret.

PyYAML's compose step gives every node a start mark; we walk the node tree once, build plain Python
data and a map from key path (tuple of keys / list indexes) to the position of that value. The same
walk finds duplicate keys, which PyYAML would silently resolve to the last one.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.errors import AuthorError
from infra.redact import mask_secrets_in

KeyPath = tuple[str | int, ...]
_WIDEST_EXCERPT = 160  # source lines longer than this are shown as a window around the caret


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
        # a password or token written in the file is not repeated on the terminal (or a CI log)
        src, col = mask_secrets_in(lines[pos.line - 1], same_width=True), pos.col
        if len(src) > _WIDEST_EXCERPT:  # a window around the column, not a 100 KB line
            start = max(0, min(col - 1 - _WIDEST_EXCERPT // 2, len(src) - _WIDEST_EXCERPT))
            shown = src[start:start + _WIDEST_EXCERPT]
            src = ("..." if start else "") + shown + ("..." if start + _WIDEST_EXCERPT < len(src) else "")
            col = col - start + (3 if start else 0)
        if not src.isprintable():  # a control character would act on the terminal: show it as '?', same width
            src = "".join(ch if ch.isprintable() or ch == "\t" else "?" for ch in src)
        gutter = f"{pos.line:>4} | "
        return f"{gutter}{src}\n{' ' * (len(gutter) + col - 1)}^"


def format_located(doc: SourceDoc, key_path: KeyPath, message: str, hint: str | None = None,
                   *, code: str, at: Position | None = None, severity: str = "error") -> str:
    """`path:line:col: error[CODE] message`, the line with a caret, and a hint: how every author error
    reads (`warning[CODE]` for what `check` points out without failing)."""
    pos = at or doc.locate(key_path)
    where = f" (at {'.'.join(str(k) for k in key_path)})" if key_path else ""
    out = f"{doc.path}:{pos.line}:{pos.col}: {severity}[{code}] {message}{where}"
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
    "finite_number": "expected a finite number (not .inf or .nan)",
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
                        codes: Mapping[str, str] = PLAYBOOK_CODES, *, hints: Mapping[str, str] | None = None) -> list[str]:
    """Pydantic validation errors as located messages (one per place); unknown keys get a did-you-mean.

    `hints` (by the key's name) say what to write instead when a value is wrong or out of bounds.
    """
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
        hint = (hints or {}).get(str(loc[-1])) if loc else None
        problems.append(format_located(doc, where, message, hint, code=codes["value"]))
    return problems


_FAST = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_NODES = 100_000  # a playbook is a screen or two; this stops alias bombs ("billion laughs")
# A playbook or config is a screen or two (the shipped ones are 1-6 KB); 1 MiB is generous and
# keeps a wrong file (a log, a data dump, /dev/zero) from being read whole or parsed for minutes.
MAX_BYTES = 1 << 20
# The shipped playbooks nest 7 levels (mapping > segments > tiers > offer); libyaml's C composer
# recurses per level without a guard (25,000 levels overflow the C stack: SIGSEGV) and both of
# PyYAML's scanners get quadratic in deep flow nesting, so deeper text is refused before any loader.
MAX_DEPTH = 64
_MIB = 1 << 20
_PURE_PYTHON_CHARS = 64 * 1024  # longer text libyaml refused keeps libyaml's error (PyYAML is ~130 KB/s)
# The leading indentation and compact block indicators of every line (`  - - ? key`): a block
# collection starts at one of these columns, so their widest run bounds the block nesting.
_BLOCK_PREFIX = re.compile(r"^ *(?:[-?:][ \t]+)*", re.M)


def load_yaml(path: Path, *, kind: str = "file") -> SourceDoc:
    """Read and compose one YAML document; syntax errors become AuthorError with a position.

    At most MAX_BYTES are read: a larger file (or a device that never ends) is refused unread.
    """
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise AuthorError(f"{kind} not found: {path}", hint="check the path", code="L101") from None
    if len(raw) > MAX_BYTES:
        raise _too_large(path, kind)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AuthorError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})",
            hint="save the file as UTF-8",
            code="L102",
        ) from None
    # universal newlines, as Path.read_text gives them: positions count \r\n and \r as one line end
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return parse_yaml_text(text, path, kind=kind)


def _too_large(path: Path, kind: str) -> AuthorError:
    doc = SourceDoc(path, "", None, {}, {})
    message = f"the {kind} is larger than {MAX_BYTES // _MIB} MiB; it is not read"
    hint = (f"a {kind} is a screen or two of YAML: is this the right file? Split a long playbook into "
            "several playbooks")
    return AuthorError(f"{path}: {message}", code="L106",
                       problems=[format_located(doc, (), message, hint, code="L106", at=Position(1, 1))])


def _too_deep(path: Path, text: str, kind: str, line: int, col: int, *, through_aliases: bool = False) -> AuthorError:
    doc = SourceDoc(path, text, None, {}, {})
    message = (f"the {kind} nests more than {MAX_DEPTH} levels deep "
               + ("once its aliases are expanded" if through_aliases else "here"))
    hint = ("the shipped playbooks nest 7 levels at most (segments > tiers > variants > offer): close the "
            "brackets or indentation opened above, and write nested lists one item per line")
    return AuthorError(f"{path}: {message}", code="L159",
                       problems=[format_located(doc, (), message, hint, code="L159", at=Position(line, col))])


def depth_bound(text: str) -> int:
    """A cheap upper bound of the text's nesting depth, from the text alone (no YAML scanner).

    Block collections only nest to the right (a block sequence may share its mapping's column), so
    they nest at most twice as deep as the widest indentation-and-indicators prefix of a line; flow
    collections (which hold no block ones) at most as deep as there are `[` and `{` in the text.
    """
    widest = max(map(len, _BLOCK_PREFIX.findall(text)), default=0)
    return 2 * (widest + 1) + text.count("[") + text.count("{")


def surely_shallow(text: str) -> bool:
    """`depth_bound(text) <= MAX_DEPTH`, or False, at the cost of two counts and one regex search.

    No line may begin with more blanks and indicator characters than the brackets leave room for;
    such a line's prefix is at least as wide as its indentation-and-indicators run.
    """
    room = (MAX_DEPTH - text.count("[") - text.count("{")) // 2 - 1
    return room >= 0 and _prefix_wider_than(room).search(text) is None


@functools.lru_cache(maxsize=None)
def _prefix_wider_than(width: int) -> re.Pattern[str]:
    return re.compile(rf"^[ \t?:-]{{{width + 1}}}", re.M)


def _check_depth(text: str, path: Path, kind: str, loader: type) -> None:
    """Refuse text nested deeper than MAX_DEPTH, located where it got too deep, before it is composed.

    Most files are settled by `depth_bound`. The rest are read event by event, which needs no
    recursion, and stopped at the first collection past the limit, so a scanner's per-level work
    stays bounded too. A syntax error first is left to the loader that reports it.
    """
    if surely_shallow(text):
        return
    depth = 0
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    mark = event.start_mark
                    raise _too_deep(path, text, kind, mark.line + 1, mark.column + 1)
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
    except yaml.YAMLError:
        return


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
    """Compose `text` and build data with positions; every failure is an AuthorError.

    Text over MAX_BYTES or nested deeper than MAX_DEPTH is refused before a loader sees it.
    """
    if len(text) > MAX_BYTES // 4 and len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise _too_large(path, kind)
    _check_depth(text, path, kind, _FAST)
    refused: yaml.YAMLError | None = None
    try:
        # libyaml composes ~5x faster; the pure-Python loader words syntax errors the same everywhere,
        # so it gets the second look whenever libyaml refuses the text (unless the text is long:
        # PyYAML reads about 130 KB a second, and a 1 MiB file must not take a minute to refuse).
        node = yaml.compose(text, Loader=_FAST)
    except yaml.YAMLError as exc:
        node, refused = None, exc
    except RecursionError:
        node = None
    try:
        if isinstance(refused, yaml.MarkedYAMLError) and len(text) > _PURE_PYTHON_CHARS:
            raise refused
        if node is None and text.strip():
            if _FAST is not yaml.SafeLoader:  # the two may part ways after libyaml's error: look again
                _check_depth(text, path, kind, yaml.SafeLoader)
            node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(text, path, exc) from None
    except yaml.YAMLError as exc:
        raise AuthorError(f"{path}: invalid YAML: {exc}", code="L103") from None
    except RecursionError:
        raise AuthorError(f"{path}: the YAML is nested too deeply", hint="a playbook needs a few levels at most",
                          code="L159") from None
    builder = _Builder()
    try:
        data = builder.build(node, ()) if node is not None else None
    except _TooDeep as exc:  # through aliases: point at the top-level key whose value expands that far
        at = builder.key_positions.get(exc.path[:1]) or Position(exc.line, exc.col)
        raise _too_deep(path, text, kind, at.line, at.col, through_aliases=True) from None
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


class _TooDeep(Exception):
    """Aliases nested into each other past MAX_DEPTH (the text itself was checked before composing)."""

    def __init__(self, path: KeyPath, line: int, col: int) -> None:
        super().__init__(path, line, col)
        self.path, self.line, self.col = path, line, col


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
        if len(path) >= MAX_DEPTH and isinstance(node, yaml.CollectionNode):  # the 65th collection down
            raise _TooDeep(path, node.start_mark.line + 1, node.start_mark.column + 1)
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
