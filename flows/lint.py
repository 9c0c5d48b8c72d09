"""Segments that can never match: decidable cases of "an earlier rule already takes everyone this one would".

Segments are tried in order and the first match wins, so segment B is dead when every customer B
selects is also selected by an earlier segment A. In general that is undecidable; we decide it for
the rules ops actually write, and stay silent otherwise (never a false alarm):

- A is `else`, or a rule that is always true (`true`, `x is null or x is not null` is not detected);
- A and B are conjunctions (`and`) of simple conditions: a feature compared with a constant
  (`== != < <= > >=`), `feature in [...]`, `feature not in [...]`, `feature is [not] null`;
  conditions of B that are not simple only narrow B, so they are ignored. B is dead when, for every
  feature A constrains, B constrains it at least as tightly (`recency_days > 60` after
  `recency_days > 30`; `member_tier == 'gold'` after `member_tier in ['gold', 'diamond']`);
- B alone can match nobody (`recency_days > 90 and recency_days < 30`).

Not detected: B covered by the union of several earlier rules, or by rules using `or`,
arithmetic or functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

Tree = dict[str, Any]
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


@dataclass
class Constraint:
    """What a conjunction says about one feature: an interval, allowed/forbidden values, nullness."""

    low: float = -math.inf
    low_open: bool = False
    high: float = math.inf
    high_open: bool = False
    allowed: frozenset | None = None  # None: any value
    forbidden: frozenset = field(default_factory=frozenset)
    null: bool | None = None  # True: must be null; False: must not be null; None: either

    def values_ok(self) -> bool:
        """False when no value can satisfy the constraint (for a feature that must be non-null)."""
        if self.low > self.high or (self.low == self.high and (self.low_open or self.high_open)):
            return False
        if self.allowed is not None:
            return any(self.admits(v) for v in self.allowed)
        return True

    def admits(self, v: Any) -> bool:
        if v in self.forbidden:
            return False
        if self.allowed is not None and v not in self.allowed:
            return False
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            above = v > self.low or (v == self.low and not self.low_open)
            below = v < self.high or (v == self.high and not self.high_open)
            return above and below
        return self.low == -math.inf and self.high == math.inf


def _atoms(tree: Tree) -> list[Tree]:
    if tree.get("op") == "and":
        return [a for arg in tree["args"] for a in _atoms(arg)]
    return [tree]


def _simple(atom: Tree) -> tuple[str, str, Any] | None:
    """(feature, op, constant or list) for a simple condition, else None."""
    op, args = atom.get("op"), atom.get("args", [])
    if op in ("is null", "is not null") and "feature" in args[0]:
        return args[0]["feature"], op, None
    if op in ("in", "not in") and "feature" in args[0]:
        return args[0]["feature"], op, tuple(atom["values"])
    if op in _FLIP and len(args) == 2:
        a, b = args
        if "feature" in a and "const" in b:
            return a["feature"], op, b["const"]
        if "const" in a and "feature" in b:
            return b["feature"], _FLIP[op], a["const"]
    return None


def constraints(tree: Tree, *, strict: bool) -> dict[str, Constraint] | None:
    """Per-feature constraints of a conjunction; None when `strict` and some condition is not simple."""
    out: dict[str, Constraint] = {}
    for atom in _atoms(tree):
        if atom.get("const") is True:
            continue
        simple = _simple(atom)
        if simple is None:
            if strict:
                return None
            continue
        name, op, value = simple
        c = out.setdefault(name, Constraint())
        if op == "is null":
            c.null = True
            continue
        c.null = False if c.null is None else c.null
        if c.null is True:
            c.null = None  # contradictory: null and compared; leave undecided rather than guess
            continue
        if op == "in":
            c.allowed = frozenset(value) if c.allowed is None else c.allowed & frozenset(value)
        elif op == "not in":
            c.forbidden = c.forbidden | frozenset(value)
        elif op == "==":
            c.allowed = frozenset([value]) if c.allowed is None else c.allowed & {value}
        elif op == "!=":
            c.forbidden = c.forbidden | {value}
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if op in (">", ">=") and (value > c.low or (value == c.low and op == ">")):
                c.low, c.low_open = value, op == ">"
            elif op in ("<", "<=") and (value < c.high or (value == c.high and op == "<")):
                c.high, c.high_open = value, op == "<"
    return out


def _within(inner: Constraint, outer: Constraint) -> bool:
    """Every value `inner` admits is admitted by `outer`."""
    if outer.null is True:
        return inner.null is True
    if inner.null is True:
        return outer.null is None and outer.allowed is None and not outer.forbidden and \
            outer.low == -math.inf and outer.high == math.inf
    if inner.allowed is not None:
        return all(outer.admits(v) for v in inner.allowed if inner.admits(v))
    if outer.allowed is not None:
        return False
    if any(inner.admits(v) for v in outer.forbidden):
        return False
    low_ok = inner.low > outer.low or (inner.low == outer.low and (inner.low_open or not outer.low_open))
    high_ok = inner.high < outer.high or (inner.high == outer.high and (inner.high_open or not outer.high_open))
    return low_ok and high_ok


def never_matches(rule: Tree) -> bool:
    """The rule's simple conditions contradict each other."""
    cons = constraints(rule, strict=False) or {}
    return any(c.null is False and not c.values_ok() for c in cons.values())


def covers(earlier: Tree | None, later: Tree) -> bool:
    """Every customer `later` selects is selected by `earlier` (None: an `else`, which takes everyone)."""
    if earlier is None or earlier.get("const") is True:
        return True
    outer = constraints(earlier, strict=True)
    if outer is None:
        return False
    inner = constraints(later, strict=False) or {}
    return all(name in inner and _within(inner[name], c) for name, c in outer.items())


def shadowed(rules: list[tuple[str, Tree | None]]) -> list[tuple[int, str | None]]:
    """(index, name of the earlier segment that takes everyone, or None when the rule contradicts itself)."""
    found = []
    for i, (_, rule) in enumerate(rules):
        if rule is not None and never_matches(rule):
            found.append((i, None))
            continue
        for earlier_name, earlier in rules[:i]:
            takes_all = earlier is None or earlier.get("const") is True
            if takes_all if rule is None else covers(earlier, rule):
                found.append((i, earlier_name))
                break
    return found
