"""The rule expression language: what compiles to what, what a rule selects, and what is refused."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flows.expr import MAX_LENGTH, ExprError, compile_expr, evaluate, features_used
from tasks.catalog import Feature

AS_OF = datetime.date(2024, 3, 11)
SIGNUP = Feature("signup_date", "date", "", "day of sign-up", nullable=True)
VIP = Feature("is_vip", "boolean", "", "flagged as VIP", nullable=True)


@pytest.fixture
def customers() -> pd.DataFrame:
    """Five customers a reader can check by eye; C never ordered, E's tier is unknown."""
    return pd.DataFrame(
        {
            "orders_total": [3, 10, 0, 1, 2],
            "recency_days": pd.array([10, 95, None, 400, 30], dtype="Int64"),
            "churn_score": [0.7, 0.2, np.nan, 0.9, 0.6],
            "monetary_365d": [900.0, 50.0, 0.0, 1000.0, 800.0],
            "member_tier": ["gold", "Silver", "bronze", "diamond", None],
            "days_to_birthday": pd.array([None, 3, 100, 0, None], dtype="Int64"),
            "engagement_change": [-0.5, 0.1, None, -0.3, 0.0],
            "points": [100, 0, 20, 0, 7],
            "signup_date": [datetime.date(2024, 3, 1), datetime.date(2023, 3, 11), None, AS_OF, AS_OF],
            "is_vip": pd.array([True, False, None, True, False], dtype="boolean"),
        },
        index=list("ABCDE"),
    )


def run(text: str, frame: pd.DataFrame, **kw: object) -> str:
    """The customers a rule selects, as a string of index labels ('AD')."""
    features = _features()
    result = evaluate(compile_expr(text, features), frame, **kw)  # type: ignore[arg-type]
    assert result.dtype == bool and list(result.index) == list(frame.index)
    return "".join(result.index[result])


def _features() -> dict[str, Feature]:
    from tasks.catalog import BY_NAME

    return {**BY_NAME, SIGNUP.name: SIGNUP, VIP.name: VIP}


def reject(text: str) -> ExprError:
    with pytest.raises(ExprError) as info:
        compile_expr(text, _features())
    assert info.value.code == ("L111" if info.value.message.startswith("unknown feature") else "L110")
    return info.value


# ---- compile: the tree a plan stores ----


def test_playbook_rule_compiles_to_plain_tree() -> None:
    tree = compile_expr("churn_score >= 0.6 and monetary_365d >= 800 and member_tier in ['gold', 'diamond']")
    assert tree == {
        "op": "and",
        "args": [
            {"op": ">=", "args": [{"feature": "churn_score", "type": "number"}, {"const": 0.6}]},
            {"op": ">=", "args": [{"feature": "monetary_365d", "type": "number"}, {"const": 800}]},
            {"op": "in", "args": [{"feature": "member_tier", "type": "string"}], "values": ["gold", "diamond"]},
        ],
    }


def test_null_test_and_negative_constant_compile() -> None:
    tree = compile_expr("days_to_birthday is null or engagement_change <= -0.3")
    assert tree == {
        "op": "or",
        "args": [
            {"op": "is null", "args": [{"feature": "days_to_birthday", "type": "integer"}]},
            {"op": "<=", "args": [{"feature": "engagement_change", "type": "number"}, {"const": -0.3}]},
        ],
    }


def test_chained_comparison_becomes_and() -> None:
    tree = compile_expr("30 <= recency_days < 90")
    assert tree["op"] == "and"
    assert [arg["op"] for arg in tree["args"]] == ["<=", "<"]


@pytest.mark.parametrize(
    "text",
    [
        "orders_total >= 1 and recency_days <= 365",
        "30 <= recency_days < 90 and not member_tier not in ['gold', 'diamond']",
        "coalesce(days_to_birthday, 999) <= 7 or max(points, 0) / min(orders_total, 3) % 2 > -1.5",
        "lower(member_tier) == 'gold' and abs(engagement_change) >= 0.3 and days_since(signup_date) > 30",
        "is_vip == true or is_vip is not null and True",
    ],
)
def test_tree_is_json_round_trippable_and_deterministic(text: str) -> None:
    tree = compile_expr(text, _features())
    assert json.loads(json.dumps(tree)) == tree
    assert json.dumps(compile_expr(text, _features())) == json.dumps(tree)


def test_features_used() -> None:
    tree = compile_expr("coalesce(recency_days, tenure_days) > 30 and member_tier in ['gold'] or churn_score is null")
    assert features_used(tree) == {"recency_days", "tenure_days", "member_tier", "churn_score"}
    assert features_used(compile_expr("true")) == set()


def test_compiling_does_not_import_pandas() -> None:
    code = (
        "import sys; from flows.expr import compile_expr; compile_expr('recency_days > 90'); "
        "assert 'pandas' not in sys.modules and 'numpy' not in sys.modules, 'compiler imported pandas/numpy'"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ---- evaluate: who a rule selects ----


@pytest.mark.parametrize(
    ("text", "selected"),
    [
        ("orders_total >= 1 and recency_days <= 365", "ABE"),
        ("churn_score >= 0.6 and monetary_365d >= 800 and member_tier in ['gold', 'diamond']", "AD"),
        ("days_to_birthday is null or engagement_change <= -0.3", "ADE"),
        # a comparison with a null is false, its negation true
        ("recency_days > 90", "BD"),
        ("not recency_days > 90", "ACE"),
        ("recency_days != 10", "BDE"),
        ("10 != recency_days", "BDE"),
        ("recency_days is null", "C"),
        ("recency_days is not null", "ABDE"),
        ("30 <= recency_days < 100", "BE"),
        ("member_tier in ['gold', 'Silver']", "AB"),
        ("member_tier not in ['gold', 'Silver']", "CD"),
        ("not member_tier in ['gold', 'Silver']", "CDE"),
        ("member_tier == 'silver'", ""),
        ("lower(member_tier) == 'silver'", "B"),
        ("member_tier < 'c'", "BC"),
        ("'c' > member_tier", "BC"),
        ("member_tier != 'gold'", "BCD"),
        ("coalesce(recency_days, 9999) > 365", "CD"),
        ("coalesce(member_tier, 'none') == 'none'", "E"),
        ("abs(engagement_change) >= 0.3", "AD"),
        ("min(points, orders_total) >= 2", "AE"),
        ("max(points, orders_total) == 10", "B"),
        ("-points < -50", "A"),
        ("points + orders_total * 2 > 25", "A"),
        ("points % 2 == 1", "E"),
        # division by zero is null, so neither > nor <= selects it
        ("points / orders_total > 5", "A"),
        ("points / orders_total <= 5", "BDE"),
        ("(points / orders_total) is null", "C"),
        ("monetary_365d / points is null", "BD"),
        ("is_vip", "AD"),
        ("not is_vip", "BCE"),
        ("is_vip == false", "BE"),
        ("true", "ABCDE"),
        ("false or 1 > 2", ""),
    ],
)
def test_evaluate_selects(customers: pd.DataFrame, text: str, selected: str) -> None:
    assert run(text, customers) == selected


@pytest.mark.parametrize("dtype", [object, "string", "str"])
def test_string_columns_with_missing_values(customers: pd.DataFrame, dtype: object) -> None:
    customers["member_tier"] = customers["member_tier"].astype(dtype)
    assert run("member_tier == 'gold' or member_tier >= 'd'", customers) == "AD"
    assert run("member_tier != 'gold'", customers) == "BCD"
    assert run("member_tier is null", customers) == "E"


def test_days_since_counts_days_to_as_of(customers: pd.DataFrame) -> None:
    assert run("days_since(signup_date) == 10", customers, as_of=AS_OF) == "A"
    assert run("days_since(signup_date) >= 366", customers, as_of=AS_OF) == "B"
    assert run("days_since(signup_date) is null", customers, as_of=AS_OF) == "C"
    customers.attrs["as_of"] = AS_OF
    assert run("days_since(signup_date) < 1", customers) == "DE"


def test_days_since_without_as_of_says_so(customers: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="days_since.*as-of date"):
        run("days_since(signup_date) > 1", customers)


def test_missing_column_is_named(customers: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="no column 'tenure_days'"):
        run("tenure_days > 1", customers)


def test_empty_frame(customers: pd.DataFrame) -> None:
    assert run("recency_days > 90", customers.iloc[:0]) == ""


NUMBER_OR_NAN = st.one_of(st.just(np.nan), st.integers(-3, 3).map(float), st.floats(-1e6, 1e6, allow_nan=False))
AB = {
    "a": Feature("a", "number", "", "", nullable=True),
    "b": Feature("b", "number", "", "", nullable=True),
}


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_comparison_matches_pandas_and_not_is_its_complement(data: st.DataObject) -> None:
    size = data.draw(st.integers(0, 30))
    a = data.draw(hnp.arrays(np.float64, size, elements=NUMBER_OR_NAN))
    b = data.draw(hnp.arrays(np.float64, size, elements=NUMBER_OR_NAN))
    frame = pd.DataFrame({"a": a, "b": b})
    gt = evaluate(compile_expr("a > b", AB), frame)
    expected = (frame.a > frame.b) & frame.a.notna() & frame.b.notna()
    pd.testing.assert_series_equal(gt, expected, check_names=False)
    not_gt = evaluate(compile_expr("not (a > b)", AB), frame)
    pd.testing.assert_series_equal(not_gt, ~expected, check_names=False)


# ---- refusals: what an author sees ----


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os')", "'__import__' is not a known function"),
        ("().__class__", "do not allow attribute access"),
        ("x.y", "do not allow attribute access"),
        ("[c for c in x]", "do not allow comprehensions"),
        ("lambda: 1", "do not allow lambda"),
        ("a[0]", "do not allow indexing"),
        ("min(a=1, b=2) > 0", "do not allow keyword arguments"),
        ("points ** 2 > 4", "do not allow the ** operator"),
        ("f'{points}' == '1'", "do not allow f-strings"),
        ("(y := 1)", "do not allow assignment (:=)"),
        ("min(*points) > 1", "do not allow starred arguments"),
        ("points in {1, 2}", "do not allow sets"),
        ("points > 1 if is_vip else false", "do not allow if/else"),
        ("points & 1", "do not allow the & operator"),
        ("points(1) > 0", "'points' is a feature, not a function"),
        ("open('x')", "'open' is not a known function"),
    ],
)
def test_dangerous_or_foreign_syntax_is_refused(text: str, message: str) -> None:
    assert message in reject(text).message


def test_typo_gets_suggestion_and_column() -> None:
    err = reject("orders_total >= 1 and recency_day <= 365")
    assert err.message == "unknown feature 'recency_day'"
    assert err.hint.startswith("did you mean 'recency_days'")  # the closest match comes first
    assert err.col == 23
    assert err.render() == f"error[L111]: unknown feature 'recency_day' (column 23)\n  hint: {err.hint}"


def test_unknown_name_far_from_all_lists_some_features() -> None:
    err = reject("xyzzy > 1")
    assert err.hint is not None and err.hint.startswith("available features include ")
    assert "avg_order_value" in err.hint


def test_column_counts_characters_not_bytes() -> None:
    assert reject("member_tier == '金卡' and tenur_days > 1").col == 25
    assert reject("  recency_day > 1").col == 3


def test_single_equals_hints_double() -> None:
    err = reject("recency_days = 90")
    assert err.message.startswith("invalid expression")
    assert (err.col, err.hint) == (14, "use == to compare")


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("recency_days > 1 && points > 2", "use and / or / not"),
        ("recency_days > 1 AND points > 2", "write and / or / not in lowercase"),
        ("recency_days > 1 and\npoints > 2", "wrap a multi-line expression in parentheses, or use YAML's folded style (>)"),
    ],
)
def test_common_syntax_slips_get_hints(text: str, hint: str) -> None:
    assert reject(text).hint == hint


def test_multi_line_in_parentheses_compiles() -> None:
    assert compile_expr("(recency_days > 1 and\n points > 2)")["op"] == "and"


@pytest.mark.parametrize("text", ["recency_days == None", "recency_days is None", "recency_days == null"])
def test_none_and_null_comparisons_point_to_is_null(text: str) -> None:
    err = reject(text)
    assert err.hint == "write `x is null`"
    assert err.col == 17


@pytest.mark.parametrize(
    ("text", "message", "col"),
    [
        ("member_tier > 3", "cannot compare `member_tier` (string) with `3` (number)", 1),
        ("recency_days > '90'", "cannot compare `recency_days` (number) with `'90'` (string)", 1),
        ("member_tier in ['gold', 1]", "`member_tier` is text but the list holds `1` (a number)", 25),
        ("points in 'abc'", "`in` needs a list of values on the right", 11),
        ("points in []", "the list after `in` is empty", 11),
        ("points in [orders_total]", "the list after `in` may only hold constants", 12),
        ("recency_days", "the whole expression needs true/false, but `recency_days` is a number", 1),
        ("points and is_vip", "`and` needs true/false, but `points` is a number", 1),
        ("not member_tier", "`not` needs true/false, but `member_tier` is text", 5),
        ("member_tier + 1 > 2", "`+` needs a number, but `member_tier` is text", 1),
        ("lower(points) == 'a'", "lower needs text, but `points` is a number", 7),
        ("days_since(recency_days) > 3", "days_since needs a date, but `recency_days` is a number", 12),
        ("coalesce(member_tier, 0) == 'x'", "coalesce needs text, but `0` is a number", 23),
        ("signup_date > 3", "cannot compare `signup_date` (date) with `3` (number)", 1),
        ("is_vip > false", "true/false values cannot be compared with >", 1),
        ("min(points) > 1", "min takes 2 or more arguments, got 1", 1),
        ("recency_days is 3", "`is` and `is not` only work with null", 17),
        ("null", "null can only be tested with `is null` / `is not null`", 1),
        ("1e999 > points", "the number `1e999` is too large", 1),
        ("", "the expression is empty", 1),
    ],
)
def test_type_and_shape_errors(text: str, message: str, col: int) -> None:
    err = reject(text)
    assert (err.message, err.col) == (message, col)


def test_huge_input_is_refused_before_parsing() -> None:
    err = reject("points > 1 and " * 200 + "true")
    assert f"the limit is {MAX_LENGTH}" in err.message
    assert err.hint == "split it into several rules or segments"


@pytest.mark.parametrize(
    "text",
    ["(" * 300 + "true" + ")" * 300, "not " * 400 + "true", "+".join(["points"] * 200) + " > 1", "-" * 1500 + "points > 1"],
)
def test_deep_nesting_is_a_clean_error(text: str) -> None:
    err = reject(text)
    assert "nested" in err.message
