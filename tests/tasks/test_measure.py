"""Measurement: Newcombe's interval against the published values, bootstrap coverage, and what the
comparison reports for a playbook (intent to treat, no holdout, zero conversions, costs and ROI)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from flows.compiler import compile_file
from infra.settings import SHIPPED_PLAYBOOKS, load_config
from tasks import measure, stats

# Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10 (hybrid score, no continuity
# correction): (x1, n1, x0, n0) -> (low, high) of p1 - p0, to the paper's four decimals.
NEWCOMBE_TABLE_II = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0000)),
    ((10, 10, 0, 10), (0.6075, 1.0000)),
]


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE_TABLE_II)
def test_newcombe_hybrid_score_interval_matches_the_published_table(counts, expected):
    d, low, high = stats.rate_difference(*counts)
    assert float(d) == pytest.approx(counts[0] / counts[1] - counts[2] / counts[3])
    assert (round(float(low), 4), round(float(high), 4)) == expected


def test_wilson_interval_matches_the_published_example_and_is_vectorised():
    low, high = stats.wilson([81, 0, 263], [263, 10, 263])  # Newcombe (1998) single proportion: 81/263
    assert (round(float(low[0]), 4), round(float(high[0]), 4)) == (0.2553, 0.3662)
    assert low[1] == 0 and high[2] == 1


def _revenue(rng, n, p, mean):
    """Zero-inflated lognormal revenue per customer: p buy, spending `mean` on average."""
    return np.where(rng.random(n) < p, rng.lognormal(np.log(mean) - 0.5, 1.0, n), 0.0)


def test_bootstrap_interval_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(11)
    truth = 0.12 * 200 - 0.08 * 200
    hits = 0
    for rep in range(200):
        a, b = _revenue(rng, 600, 0.12, 200), _revenue(rng, 300, 0.08, 200)
        d, low, high = stats.bootstrap_mean_difference(a, b, n_boot=1000, seed=rep)
        assert low <= d <= high
        hits += low <= truth <= high
    assert 0.90 <= hits / 200 <= 0.99


def test_bootstrap_is_seeded_and_as_wide_as_the_textbook_standard_error():
    rng = np.random.default_rng(3)
    a, b = _revenue(rng, 5000, 0.1, 300), _revenue(rng, 2000, 0.1, 300)
    first = stats.bootstrap_mean_difference(a, b, n_boot=4000, seed=5)
    assert first == stats.bootstrap_mean_difference(a, b, n_boot=4000, seed=5)
    se = np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    assert (first[2] - first[1]) / (2 * 1.96 * se) == pytest.approx(1.0, abs=0.08)
    assert np.isnan(stats.bootstrap_mean_difference([], b)[0])


# ---- the comparison for a playbook, on hand-made ledgers ------------------------------------------

PLAN = compile_file(SHIPPED_PLAYBOOKS / "churn_winback.yaml", load_config())
AS_OF = dt.date(2026, 6, 1)
ANCHOR = measure.touch_instant(PLAN, AS_OF)


def _ledger(spec: list[tuple]) -> pd.DataFrame:
    """(customer, status, reason, segment, tier, channel, variant) rows on AS_OF."""
    rows = pd.DataFrame(spec, columns=["customer_id", "status", "reason", "segment", "tier", "channel", "variant"])
    return rows.assign(as_of=AS_OF, cost=np.nan)


def _orders(spec: list[tuple]) -> pd.DataFrame:
    """(customer, days after the touch, amount) rows."""
    return pd.DataFrame([(c, ANCHOR + dt.timedelta(days=d), a) for c, d, a in spec],
                        columns=["customer_id", "at", "value"])


def _measure(ledger: pd.DataFrame, orders: pd.DataFrame, *, fees=None, known_until=None):
    frame = measure.outcomes(measure.assign(ledger, PLAN), orders, orders, PLAN.goal.window_days, known_until)
    sent = frame.loc[frame["status"] == "sent", "channel"].value_counts().to_dict()
    return measure.measure(frame, PLAN, fees=fees or {}, sent=sent, date_from=AS_OF, date_to=AS_OF, n_boot=300)


def test_treated_arm_is_intent_to_treat_and_conversions_count_only_inside_the_window():
    spec = ([(f"T{i}", "sent", None, "mid_value", 0, "sms", "coupon") for i in range(40)]
            + [(f"D{i}", "dropped", "no_consent", "mid_value", None, None, None) for i in range(10)]
            + [(f"H{i}", "held_out", "holdout", "mid_value", None, None, None) for i in range(50)]
            # global control: held_out (or dropped, by a dispatch that predates it) with reason global_control
            + [(f"G{i}", "held_out" if i % 2 else "dropped", "global_control", "mid_value", None, None, None)
               for i in range(5)])
    orders = _orders([(f"T{i}", 2, 100.0) for i in range(20)]      # half the reached convert
                     + [(f"D{i}", 1, 100.0) for i in range(10)]     # every dropped one too: they count
                     + [(f"H{i}", 3, 100.0) for i in range(10)]     # a fifth of the control
                     + [("H20", -1, 100.0), ("H21", 14.5, 100.0)]   # before the touch / after the window
                     + [(f"G{i}", 1, 100.0) for i in range(5)])     # the global control is in neither arm
    m = _measure(_ledger(spec), orders)
    o = m.overall
    assert (o.treated.n, o.treated.conversions, o.sent) == (50, 30, 40)
    assert (o.control.n, o.control.conversions) == (50, 10)
    assert o.lift.rate_diff == pytest.approx(0.6 - 0.2) and o.lift.rate_low > 0
    assert o.lift.incremental_conversions == pytest.approx(0.4 * 50)
    assert o.lift.revenue_diff == pytest.approx(60.0 - 20.0)
    assert o.lift.relative == pytest.approx(2.0)
    assert m.global_control == 5
    assert any("intent to treat" in n for n in m.notes)
    # the mid_value tier has no control of its own: compared with the segment's control, and said so
    (tier,) = m.tiers
    assert tier.comparison == measure.SEGMENT_CONTROL and tier.control.n == 50


def test_a_customer_selected_on_several_days_counts_once_from_their_first_day():
    first = _ledger([("A", "sent", None, "low_value", 0, "push", None), ("B", "held_out", "holdout", "low_value",
                                                                          None, None, None)])
    later = first.assign(as_of=AS_OF + dt.timedelta(days=3), status=["dropped", "held_out"])
    frame = measure.outcomes(measure.assign(pd.concat([later, first]), PLAN),
                             _orders([("A", 13, 50.0)]), _orders([("A", 13, 50.0)]), 14, None)
    assert len(frame) == 2 and frame.loc["A", "status"] == "sent" and frame.loc["A", "converted"]


def test_no_holdout_zero_conversions_and_open_windows_are_reported_not_divided_by_zero():
    only_treated = _ledger([(f"T{i}", "sent", None, "low_value", 0, "push", None) for i in range(30)])
    m = _measure(only_treated, _orders([]))
    assert m.overall.control is None and m.overall.lift is None and m.roi is None
    assert m.overall.treated.rate == 0 and "no holdout" in m.notes[0]
    assert measure.headline(m).endswith("no holdout, so no lift")
    assert m.curve["control"] == [None] * 15

    both = _ledger([(f"T{i}", "sent", None, "low_value", 0, "push", None) for i in range(30)]
                   + [(f"H{i}", "held_out", "holdout", "low_value", None, None, None) for i in range(30)])
    m = _measure(both, _orders([]), known_until=ANCHOR + dt.timedelta(days=5))
    lift = m.overall.lift
    assert lift.rate_diff == 0 and lift.rate_low < 0 < lift.rate_high and lift.relative is None
    assert (lift.revenue_diff, lift.revenue_low, lift.revenue_high) == (0, 0, 0)
    assert m.open_windows == 60 and any("had not ended" in n for n in m.notes)
    assert m.roi is None and any("no cost recorded" in n for n in m.notes)


def test_cost_counts_message_fees_and_coupons_of_converted_treated_customers_then_roi():
    spec = ([(f"A{i}", "sent", None, "high_value", 0, "advisor", None) for i in range(10)]   # 30 CNY coupon
            + [(f"G{i}", "sent", None, "mid_value", 0, "sms", "gift") for i in range(10)]    # no offer
            + [(f"H{i}", "held_out", "holdout", "high_value", None, None, None) for i in range(10)])
    orders = _orders([(f"A{i}", 1, 400.0) for i in range(6)] + [(f"G{i}", 1, 100.0) for i in range(5)]
                     + [("H0", 2, 400.0)])
    m = _measure(_ledger(spec), orders, fees={"advisor": 5.0, "sms": 0.05})
    assert m.costs.messages == {"advisor": 10, "sms": 10}
    assert m.costs.message_cost == pytest.approx(10 * 5.0 + 10 * 0.05)
    assert (m.costs.coupons, m.costs.coupon_cost) == (6, 6 * 30.0)  # the gift variant carries no coupon
    incremental = (6 * 400 + 5 * 100) / 20 * 20 - 400 / 10 * 20
    assert m.overall.lift.incremental_revenue == pytest.approx(incremental)
    assert m.net == pytest.approx(incremental - m.costs.total)
    assert m.roi == pytest.approx(m.net / m.costs.total)


def test_variants_are_tested_against_each_other_and_the_curve_climbs_to_the_conversion_rate():
    spec = ([(f"C{i}", "sent", None, "mid_value", 0, "sms", "coupon") for i in range(100)]
            + [(f"G{i}", "sent", None, "mid_value", 0, "sms", "gift") for i in range(100)]
            + [(f"H{i}", "held_out", "holdout", "mid_value", None, None, None) for i in range(100)])
    orders = _orders([(f"C{i}", i % 14, 80.0) for i in range(40)] + [(f"G{i}", 3, 80.0) for i in range(20)]
                     + [(f"H{i}", 5, 80.0) for i in range(10)])
    m = _measure(_ledger(spec), orders)
    assert [v.variant for v in m.variants] == ["coupon", "gift"]
    (test,) = m.variant_tests
    assert (test.a, test.b) == ("coupon", "gift") and test.lift.rate_diff == pytest.approx(0.2 - 0.4)
    assert test.lift.rate_high < 0
    treated = m.curve["treated"]
    assert treated[0] == 0 and all(a <= b for a, b in zip(treated, treated[1:]))
    assert treated[-1] == pytest.approx(m.overall.treated.rate) and m.curve["control"][-1] == pytest.approx(0.1)
    row = measure.group_row(m.overall)
    assert row["treated"] == 200 and row["lift_pts"] == pytest.approx(20.0)


KEEP_TIER = compile_file(SHIPPED_PLAYBOOKS / "keep_tier_reminder.yaml", load_config())  # no offers, no budget


def _reached(n_treated=40, n_held=40, treated_buy=20, held_buy=4, amount=500.0, channel="push"):
    spec = ([(f"T{i}", "sent", None, "low_value", 0, channel, None) for i in range(n_treated)]
            + [(f"H{i}", "held_out", "holdout", "low_value", None, None, None) for i in range(n_held)])
    orders = _orders([(f"T{i}", 1, amount) for i in range(treated_buy)]
                     + [(f"H{i}", 1, amount) for i in range(held_buy)])
    return _ledger(spec), orders


def test_roi_is_not_a_ratio_over_a_near_zero_cost_and_says_why():
    ledger, orders = _reached()
    tiny = _measure(ledger, orders, fees={"push": 0.001})  # 40 pushes at 0.001: 0.04 CNY against 8,000 CNY
    assert tiny.costs.total == pytest.approx(0.04) and tiny.overall.lift.incremental_revenue == pytest.approx(8000)
    assert tiny.roi is None and tiny.net == pytest.approx(8000 - 0.04)
    assert tiny.roi_note == "the cost, 0.04 CNY, is under 10 CNY: too small for a ratio"
    text = measure.summary_markdown(tiny)
    assert "- ROI: n/a: the cost, 0.04 CNY, is under 10 CNY" in text and "+199999" not in text
    assert "incremental revenue minus cost: 8,000 CNY" in text

    small = _measure(ledger, orders, fees={"push": 1.5})  # 60 CNY: over the floor, under 1% of 8,000
    assert small.roi is None and small.roi_note == ("the cost, 60.00 CNY, is under 1% of the incremental revenue "
                                                    "(8,000 CNY): too small for a ratio")
    enough = _measure(ledger, orders, fees={"push": 2.0})  # 80 CNY: 1% of it, a ratio that means something
    assert enough.roi == pytest.approx((8000 - 80) / 80) and enough.roi_note is None
    assert enough.to_json()["roi"] == pytest.approx(99.0) and enough.to_json()["roi_note"] is None
    assert tiny.to_json()["roi"] is None and tiny.to_json()["roi_note"].startswith("the cost, 0.04 CNY")


def test_money_carries_a_currency_also_for_playbooks_without_offers():
    from flows.reportcmd import demo_lines, format_table

    ledger, orders = _reached()
    frame = measure.outcomes(measure.assign(ledger, KEEP_TIER), orders, orders, 30, None)
    sent = {"push": 40}
    m = measure.measure(frame, KEEP_TIER, fees={"push": 0.5}, sent=sent, date_from=AS_OF, date_to=AS_OF, n_boot=200)
    assert m.currency == "CNY"  # neither budget nor offers: the project's default
    (money_line,) = [line for line in demo_lines([m]) if "incremental revenue" in line]
    assert money_line.strip().startswith("incremental revenue 8,000 CNY, cost 20.00 CNY, ROI n/a (the cost, 20.00 CNY, "
                                         "is under 1% of the incremental revenue (8,000 CNY)")
    eur = measure.measure(frame, KEEP_TIER, fees={"push": 0.5}, sent=sent, date_from=AS_OF, date_to=AS_OF,
                          n_boot=200, currency="EUR")  # lifecycle.yaml defaults.currency
    table = format_table(eur)
    assert "money in EUR" in table.splitlines()[0] and "8,000 EUR revenue" in table and "cost: 20.00 EUR" in table
    assert measure.currency_of(PLAN, "EUR") == "CNY"  # a playbook with a budget shows the budget's currency


def test_a_customer_held_out_on_one_day_and_treated_on_another_is_in_neither_arm():
    first = _ledger([("A", "held_out", "holdout", "low_value", None, None, None),
                     ("B", "sent", None, "low_value", 0, "push", None),
                     ("C", "held_out", "holdout", "low_value", None, None, None)])
    redrawn = first.assign(as_of=AS_OF + dt.timedelta(days=7), status=["sent", "sent", "held_out"],
                           reason=[None, None, "holdout"], tier=[0, 0, None])  # the salt changed between runs
    rows = pd.concat([first, redrawn])
    frame = measure.outcomes(measure.assign(rows, PLAN), _orders([("A", 9, 80.0)]), _orders([("A", 9, 80.0)]), 14, None)
    assert frame.loc["A", "arm"] == measure.BOTH_ARMS and frame.loc["B", "arm"] == "treated"
    m = measure.measure(frame, PLAN, fees={}, sent={"push": 3}, date_from=AS_OF, date_to=AS_OF, n_boot=100)
    assert (m.overall.treated.n, m.overall.control.n, m.both_arms) == (1, 1, 1)
    assert m.overall.control.conversions == 0  # A's order, after a touch, is no control conversion
    assert any(n.startswith("1 customer held out on one as-of day and treated on another") for n in m.notes)
    assert measure.runs_of(frame, rows) == [
        {"as_of": AS_OF.isoformat(), "customers": 3, "treated": 1, "held_out": 1, "counted_earlier": 0},
        {"as_of": (AS_OF + dt.timedelta(days=7)).isoformat(), "customers": 3, "treated": 1, "held_out": 1,
         "counted_earlier": 3}]


def test_report_json_numbers_tiers_from_1_as_the_labels_do():
    spec = ([(f"C{i}", "sent", None, "mid_value", 0, "sms", "coupon") for i in range(30)]
            + [(f"G{i}", "sent", None, "mid_value", 0, "sms", "gift") for i in range(30)]
            + [(f"H{i}", "held_out", "holdout", "mid_value", 0, "sms", None) for i in range(30)])
    data = _measure(_ledger(spec), _orders([("C1", 2, 50.0)])).to_json()
    assert [(t["label"], t["tier"]) for t in data["tiers"]] == [("mid_value / tier 1 sms", 1)]
    assert {v["tier"] for v in data["variants"]} == {1} and data["variant_tests"][0]["tier"] == 1
    assert data["overall"]["tier"] is None
