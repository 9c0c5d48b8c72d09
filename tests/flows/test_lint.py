"""Shadowed segments: the decidable cases are caught, and nothing that can match is ever flagged."""

from __future__ import annotations

import pytest

from flows.expr import compile_expr
from flows.lint import shadowed


def dead(*rules: str | None) -> list[tuple[int, str | None]]:
    return shadowed([(f"s{i}", compile_expr(r) if r else None) for i, r in enumerate(rules)])


@pytest.mark.parametrize("rules, expected", [
    (("recency_days > 30", "recency_days > 60"), [(1, "s0")]),
    (("recency_days >= 30 and recency_days < 90", "recency_days > 40 and recency_days <= 80 and points > 5"), [(1, "s0")]),
    (("member_tier in ['gold', 'diamond']", "member_tier == 'gold'"), [(1, "s0")]),
    (("true", "recency_days > 1"), [(1, "s0")]),
    (("recency_days > 90 and recency_days < 30",), [(0, None)]),
    (("recency_days != 5", "recency_days > 5"), [(1, "s0")]),
    ((None, None), [(1, "s0")]),
])
def test_rules_that_can_never_match_are_found(rules, expected):
    assert dead(*rules) == expected


@pytest.mark.parametrize("rules", [
    ("recency_days > 60", "recency_days > 30"),
    ("churn_score >= 0.6 and monetary_365d >= 1500", "churn_score >= 0.6 and monetary_365d >= 300", "churn_score >= 0.7"),
    ("recency_days > 30 or points > 1", "recency_days > 60"),  # `or` is not analysed: silence, not a guess
    ("abs(points) > 3", "points > 10"),
    ("recency_days != 5", "recency_days > 4"),
    ("member_tier == 'gold'", "member_tier in ['gold', 'diamond']"),
    ("recency_days is null", "recency_days > 3"),
])
def test_rules_that_can_match_are_not_flagged(rules):
    assert dead(*rules) == []
