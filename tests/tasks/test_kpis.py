"""KPIs: numbers ops can check by hand on a tiny warehouse, and the same numbers pandas gets on a generated world."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from infra.errors import UsageError, WarehouseError
from infra.warehouse.bulk import bulk_load
from infra.warehouse.db import open_warehouse, upgrade
from infra.warehouse.schema import customers, orders
from tasks.kpis import compute
from tests.conftest import END, make_world

D = dt.datetime


def _tiny(url: str):
    """Five customers whose KPIs are easy to work out on paper."""
    engine = open_warehouse(url, create=True)
    upgrade(engine)
    people = pd.DataFrame({
        "customer_id": ["A", "B", "C", "D", "E"],
        "signed_up_at": [D(2026, 1, 3), D(2026, 1, 10), D(2026, 1, 15), D(2026, 2, 2), D(2026, 2, 5)],
        "timezone": "Asia/Shanghai",
    })
    bought = [("A", D(2026, 1, 5, 10), 100.0), ("A", D(2026, 1, 20), 50.0), ("A", D(2026, 3, 2), 30.0),
              ("B", D(2026, 2, 1), 200.0), ("B", D(2026, 4, 15), 100.0),
              ("D", D(2026, 6, 20), 80.0),
              ("E", D(2026, 2, 6), 40.0), ("E", D(2026, 2, 7), 60.0)]
    frame = pd.DataFrame(bought, columns=["customer_id", "ordered_at", "amount"])
    frame.insert(0, "order_id", [f"O{i}" for i in range(len(frame))])
    with engine.begin() as conn:
        bulk_load(conn, customers, people)
        bulk_load(conn, orders, frame)
    return engine


def test_hand_checked_kpis(any_url):
    k = compute(_tiny(any_url), dt.date(2026, 1, 1), dt.date(2026, 6, 30))
    c = k.cohorts.set_index("cohort")
    jan, feb = c.loc["2026-01"], c.loc["2026-02"]
    # January: A (3 orders, second after 15 days), B (2 orders, second after 73 days), C (none)
    assert (jan["signed_up"], jan["first_order"], jan["second_order"], jan["third_plus"]) == (3, 2, 2, 1)
    assert (jan["repurchase_30d"], jan["repurchase_30d_eligible"]) == (1, 2)
    assert jan["aov"] == pytest.approx(480 / 5)
    # February: E bought twice in a day; D's first order (20 June) is not 30 days old on 30 June
    assert (feb["first_order"], feb["second_order"], feb["repurchase_30d"], feb["repurchase_30d_eligible"]) == (2, 1, 1, 1)
    # retention: A's and B's first-order months are January and February; both ordered again 2 months later
    assert k.retention.loc["2026-01", 0] == 1.0
    assert k.retention.loc["2026-01", 1] == 0.0
    assert k.retention.loc["2026-01", 2] == 1.0
    m = k.monthly.set_index("month")
    # active = an order in the 90 days up to the month's end: end of May only B (A's 2 March is 90 days
    # before 1 June); end of June B and D
    assert list(m["active_90d"]) == [1, 3, 3, 3, 1, 2]
    assert list(m["new_buyers"]) == [1, 2, 0, 0, 0, 1]
    assert list(m["signups"]) == [3, 2, 0, 0, 0, 0]
    assert m.loc["2026-02", "aov"] == pytest.approx(300 / 3)
    assert k.totals["repeat_rate"] == pytest.approx(3 / 4)
    assert k.totals["repurchase_30d_rate"] == pytest.approx(2 / 3, abs=1e-4)


def test_period_bounds_are_respected(sqlite_url):
    engine = _tiny(sqlite_url)
    k = compute(engine, dt.date(2026, 2, 14), dt.date(2026, 3, 31))
    assert list(k.monthly["month"]) == ["2026-02", "2026-03"]
    assert list(k.cohorts["cohort"]) == ["2026-02"]  # sign-ups in February only
    # orders after the period do not count: D (June) has not bought by 31 March
    assert k.cohorts.iloc[0]["first_order"] == 1
    with pytest.raises(UsageError) as err:
        compute(engine, dt.date(2026, 5, 1), dt.date(2026, 3, 31))
    assert err.value.code == "L332"


def test_no_orders_is_a_clear_error(sqlite_url):
    engine = open_warehouse(sqlite_url, create=True)
    upgrade(engine)
    with pytest.raises(WarehouseError) as err:
        compute(engine)
    assert err.value.code == "L408"


def _reference(engine, start: dt.date, end: dt.date) -> dict:
    """The same KPIs the slow, obvious way: every row into pandas."""
    with engine.connect() as conn:
        o = pd.read_sql("SELECT customer_id, order_id, ordered_at, amount FROM orders", conn, parse_dates=["ordered_at"])
        c = pd.read_sql("SELECT customer_id, signed_up_at FROM customers", conn, parse_dates=["signed_up_at"])
    stop = pd.Timestamp(end + dt.timedelta(days=1))
    o = o[o["ordered_at"] < stop].sort_values(["customer_id", "ordered_at", "order_id"])
    c = c[(c["signed_up_at"] >= pd.Timestamp(start)) & (c["signed_up_at"] < stop)]
    c["cohort"] = c["signed_up_at"].dt.strftime("%Y-%m")
    o["n"] = o.groupby("customer_id").cumcount() + 1
    first = o[o["n"] == 1].set_index("customer_id")["ordered_at"]
    second = o[o["n"] == 2].set_index("customer_id")["ordered_at"]
    count = o.groupby("customer_id").size()
    c["first"] = c["customer_id"].map(first)
    c["second"] = c["customer_id"].map(second)
    c["n"] = c["customer_id"].map(count).fillna(0)
    eligible = c["first"] < stop - pd.Timedelta(days=30)
    fast = eligible & ((c["second"] - c["first"]) <= pd.Timedelta(days=30))
    cohorts = c.assign(eligible=eligible, fast=fast).groupby("cohort").agg(
        signed_up=("customer_id", "size"), first_order=("first", "count"), second_order=("second", "count"),
        third_plus=("n", lambda s: int((s >= 3).sum())), eligible=("eligible", "sum"), fast=("fast", "sum"))
    months = pd.period_range(start, end, freq="M")
    active = []
    for p in months:
        until = min(p.end_time.normalize() + pd.Timedelta(days=1), stop)
        window = o[(o["ordered_at"] >= until - pd.Timedelta(days=90)) & (o["ordered_at"] < until)]
        active.append(window["customer_id"].nunique())
    mine = o[o["customer_id"].isin(c["customer_id"])].copy()
    idx = mine["ordered_at"].dt.year * 12 + mine["ordered_at"].dt.month
    mine["m0"] = idx.groupby(mine["customer_id"]).transform("min")
    mine["k"] = idx - mine["m0"]
    mine["cohort"] = mine["customer_id"].map(c.set_index("customer_id")["cohort"])
    starts = mine.drop_duplicates("customer_id")
    last = end.year * 12 + end.month
    retention = {}
    for k in (1, 2, 3):
        seen = starts[starts["m0"] + k <= last].groupby("cohort").size()
        back = mine[mine["k"] == k].groupby("cohort")["customer_id"].nunique()
        retention[k] = (back.reindex(seen.index, fill_value=0) / seen).round(4)
    return {"cohorts": cohorts, "active": active, "retention": retention}


def test_matches_a_pandas_reference_on_a_generated_world(sqlite_url):
    engine = make_world(sqlite_url, customers=3000, seed=3)
    start = dt.date(2025, 7, 1)
    k = compute(engine, start, END)
    ref = _reference(engine, start, END)
    got = k.cohorts.set_index("cohort")
    want = ref["cohorts"]
    assert list(got.index) == list(want.index)
    for mine, theirs in (("signed_up", "signed_up"), ("first_order", "first_order"), ("second_order", "second_order"),
                         ("third_plus", "third_plus"), ("repurchase_30d_eligible", "eligible"),
                         ("repurchase_30d", "fast")):
        assert got[mine].tolist() == want[theirs].astype(int).tolist(), mine
    assert k.monthly["active_90d"].tolist() == ref["active"]
    for k_ in (1, 2, 3):
        want_k = ref["retention"][k_]
        assert k.retention[k_].dropna().to_dict() == pytest.approx(want_k.to_dict()), k_


def test_a_month_the_period_cuts_short_is_marked_and_left_out_of_retention(sqlite_url):
    """Data to 10 April: April is 10 of 30 days. B's next order (15 April) is not seen yet, which is no sign
    that B stopped: retention two months after B's February must wait for April to be over."""
    k = compute(_tiny(sqlite_url), dt.date(2026, 1, 1), dt.date(2026, 4, 10))
    m = k.monthly.set_index("month")
    assert m["complete"].tolist() == [True, True, True, False]
    assert (m.loc["2026-04", "days"], m.loc["2026-04", "days_in_month"]) == (10, 30)
    assert (m.loc["2026-02", "days"], m.loc["2026-02", "days_in_month"]) == (28, 28)
    assert k.partial == "2026-04 (10 of 30 days)" and k.to_json()["partial_month"] == k.partial
    last = k.to_json()["monthly"][-1]
    assert (last["month"], last["days"], last["days_in_month"], last["complete"]) == ("2026-04", 10, 30, False)
    assert k.totals["latest_month_complete"] is False
    # January's cohort: A (first order January: again in March) and B (first order February)
    ret = k.retention.loc["2026-01"]
    assert ret[1] == 0.0  # February for A, March for B: both seen whole, neither ordered
    assert ret[2] == 1.0  # March for A (ordered); April for B is not over, so B is not counted (it was 1 of 2)
    assert 3 not in k.retention.columns or pd.isna(ret[3])  # April for A: not seen whole
    # the cohorts signed up in whole months are whole, but January's and February's ended 69 and 41 days
    # before 10 April: still maturing; by 30 June (150 and 122 days) they have settled
    assert k.cohorts["complete"].all()
    assert k.cohorts[["cohort", "age_days", "settled"]].values.tolist() == [["2026-01", 69, False],
                                                                          ["2026-02", 41, False]]
    later = compute(_tiny(sqlite_url.replace(".db", "3.db")), dt.date(2026, 1, 1), dt.date(2026, 6, 30))
    assert later.cohorts[["age_days", "settled"]].values.tolist() == [[150, True], [122, True]]
    assert compute(_tiny(sqlite_url.replace(".db", "2.db")), dt.date(2026, 1, 1), dt.date(2026, 4, 30)).partial is None
