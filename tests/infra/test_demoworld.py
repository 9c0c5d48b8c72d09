"""The demo world: reproducible, consistent, realistic enough to find churn in, and loaded all at once."""

from __future__ import annotations

import datetime as dt
import os
import random
import uuid
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from infra.demoworld import CONSENT_CHANNELS, World, generate_world, write_world
from infra.errors import WarehouseError
from infra.warehouse.db import open_warehouse

END = dt.date(2026, 11, 30)
END_TS = pd.Timestamp(END) + pd.Timedelta(days=1)  # exclusive: activity runs through the end of END
DAY = pd.Timedelta(days=1)
TABLES = ("customers", "orders", "events", "consents")


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(4000, seed=0, end=END)


def _frames_equal(a: World, b: World) -> None:
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))


def test_same_arguments_give_the_same_world_whatever_the_global_random_state() -> None:
    np.random.seed(1)
    random.seed(1)
    first = generate_world(2000, days=365, seed=7, end=END)
    np.random.seed(2)
    random.seed(2)
    _frames_equal(first, generate_world(2000, days=365, seed=7, end=END))


def test_another_seed_gives_another_world() -> None:
    a = generate_world(2000, days=365, seed=7, end=END)
    b = generate_world(2000, days=365, seed=8, end=END)
    with pytest.raises(AssertionError):
        _frames_equal(a, b)
    assert not a.orders["ordered_at"].equals(b.orders["ordered_at"])


def test_columns_are_the_warehouse_columns(world: World) -> None:
    from infra.warehouse import schema

    for name in TABLES:
        table = schema.metadata.tables[name]
        # the warehouse numbers events and consents itself
        expected = [c.name for c in table.c if c.name not in ("event_id", "consent_id")]
        assert list(getattr(world, name).columns) == expected


def test_nothing_is_dated_after_end_or_before_sign_up(world: World) -> None:
    c = world.customers
    assert c["signed_up_at"].min() >= pd.Timestamp(END) - 730 * DAY
    assert c["signed_up_at"].max() < pd.Timestamp(END)
    signup = c.set_index("customer_id")["signed_up_at"]
    for frame, column in ((world.orders, "ordered_at"), (world.events, "occurred_at"),
                          (world.consents, "granted_at"), (world.consents, "withdrawn_at")):
        stamps = frame[column].dropna()
        assert stamps.max() < END_TS, column
        assert (stamps >= frame.loc[stamps.index, "customer_id"].map(signup).to_numpy()).all(), column


def test_every_row_belongs_to_a_known_customer_and_ids_are_unique(world: World) -> None:
    ids = world.customers["customer_id"]
    assert ids.is_unique and ids.str.fullmatch(r"C\d{7}").all()
    assert ids.iloc[0] == "C0000001" and world.customers["signed_up_at"].is_monotonic_increasing
    assert world.orders["order_id"].is_unique
    for name in ("orders", "events", "consents"):
        assert getattr(world, name)["customer_id"].isin(ids).all(), name


def test_a_plausible_share_of_buyers_has_lapsed(world: World) -> None:
    last = world.orders.groupby("customer_id")["ordered_at"].max()
    lapsed = (last < END_TS - 90 * DAY).mean()
    assert 0.30 <= lapsed <= 0.75
    never = 1 - len(last) / len(world.customers)
    assert 0.10 <= never <= 0.45  # never-buyers plus the newest sign-ups


def _events_around(world: World, ref: pd.Series, start: int, stop: int) -> int:
    """Events in [ref + start days, ref + stop days) per customer, summed over the customers in `ref`."""
    e = world.events.merge(ref.rename("ref"), left_on="customer_id", right_index=True)
    offset = (e["occurred_at"] - e["ref"]) / DAY
    return int(((offset >= start) & (offset < stop)).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_engagement_drops_30_percent_before_a_customer_counts_as_lapsed(seed: int) -> None:
    """The churn signal: in the 60 days after their last order, before 90 quiet days call them lapsed,
    lapsing buyers interact ≥30% less than in the 60 days before it; buyers who stay do not."""
    w = generate_world(4000, seed=seed, end=END)
    by_customer = w.orders.groupby("customer_id")["ordered_at"]
    count, last = by_customer.size(), by_customer.max()
    lapsing = last[(count >= 3) & (last <= END_TS - 180 * DAY)]
    # control: still buying in the final 60 days; reference = their last order 180+ days before the end
    staying = last.index[last >= END_TS - 60 * DAY]
    early = w.orders[(w.orders["ordered_at"] <= END_TS - 180 * DAY) & w.orders["customer_id"].isin(staying)]
    early = early.groupby("customer_id")["ordered_at"]
    control = early.max()[early.size() >= 3]
    assert len(lapsing) >= 100 and len(control) >= 100

    lapsing_ratio = _events_around(w, lapsing, 0, 60) / _events_around(w, lapsing, -60, 0)
    control_ratio = _events_around(w, control, 0, 60) / _events_around(w, control, -60, 0)
    assert lapsing_ratio <= 0.70
    assert control_ratio >= 0.85


def test_messages_reach_only_customers_with_marketing_consent_on_that_channel(world: World) -> None:
    messages = world.events[world.events["type"].isin(["message.open", "message.click"])]
    marketing = world.consents[world.consents["purpose"] == "marketing"]
    assert not marketing.duplicated(["customer_id", "channel"]).any()
    m = messages.merge(marketing, on=["customer_id", "channel"], how="left")
    assert len(m) == len(messages) > 0
    active = (m["granted_at"] <= m["occurred_at"]) & (
        m["withdrawn_at"].isna() | (m["occurred_at"] < m["withdrawn_at"]))
    assert active.all()
    assert set(world.events["type"]) == {"app.visit", "product.view", "message.open", "message.click",
                                         "group.message"}
    assert set(world.events["channel"]) <= {"app", "miniprogram", *CONSENT_CHANNELS}


def test_consents_vary_by_channel_and_some_are_withdrawn_later(world: World) -> None:
    k = world.consents
    n = len(world.customers)
    marketing = k[k["purpose"] == "marketing"].groupby("channel").size() / n
    assert set(marketing.index) == set(CONSENT_CHANNELS)
    assert marketing["sms"] > marketing["email"] > marketing["push"]
    assert 0 < (k["purpose"] == "service").sum() < (k["purpose"] == "marketing").sum()
    withdrawn = k.dropna(subset=["withdrawn_at"])
    assert 0.03 <= len(withdrawn) / len(k) <= 0.12
    assert (withdrawn["withdrawn_at"] > withdrawn["granted_at"]).all()
    advisors = world.customers.set_index("customer_id")["advisor_id"]
    assert advisors.loc[k.loc[k["channel"] == "wecom", "customer_id"]].notna().all()


def test_tiers_follow_spend_with_most_customers_bronze(world: World) -> None:
    c = world.customers
    shares = c["member_tier"].value_counts(normalize=True)
    assert set(shares.index) == {"bronze", "silver", "gold", "diamond"}
    assert shares["bronze"] > 0.5 and shares["bronze"] > shares["silver"] > shares["gold"] > shares["diamond"]
    recent = world.orders[world.orders["ordered_at"] >= END_TS - 365 * DAY]
    spend = c["customer_id"].map(recent.groupby("customer_id")["amount"].sum()).fillna(0)
    by_tier = spend.groupby(c["member_tier"]).min()
    assert by_tier["bronze"] < by_tier["silver"] < by_tier["gold"] < by_tier["diamond"]
    total = c["customer_id"].map(world.orders.groupby("customer_id")["amount"].sum()).fillna(0)
    assert (c["points"] >= 100).all() and (c["points"] <= total + 100).all()


def test_profiles_are_plausible(world: World) -> None:
    c = world.customers
    for name in c["timezone"].unique():
        ZoneInfo(name)  # raises for anything that is not an IANA name
    assert (c["timezone"] == "Asia/Shanghai").mean() > 0.6 and c["timezone"].nunique() >= 6
    born = c["birthday"].dropna()
    assert 0 < c["birthday"].isna().mean() < 0.2 and all(isinstance(b, dt.date) for b in born)
    ages = [(END - b).days / 365.25 for b in born]
    assert 18 <= min(ages) and max(ages) <= 70
    assert 0.5 <= c["advisor_id"].notna().mean() <= 0.7
    assert c["advisor_id"].dropna().str.fullmatch(r"A0[0-5]\d").all()
    emails = c.dropna(subset=["email"])
    assert (emails["email"] == emails["customer_id"].str.lower() + "@example.com").all()
    assert c["phone"].dropna().str.fullmatch(r"\+86100\d{8}").all()


def test_orders_look_like_retail(world: World) -> None:
    o = world.orders
    assert (o["amount"] > 0).all() and (o["amount"].round(2) == o["amount"]).all()
    assert o["items"].between(1, 5).all()
    assert set(o["channel"]) == {"store", "app", "miniprogram", "web"}
    assert {"apparel", "shoes", "beauty", "sports", "home", "food"} <= set(o["category"])
    # heterogeneous spend: the top tenth of buyers' average order is well above the bottom tenth's
    aov = o.groupby("customer_id")["amount"].mean()
    assert aov.quantile(0.9) > 2.5 * aov.quantile(0.1)


def test_singles_day_peaks_and_chinese_new_year_dips() -> None:
    o = generate_world(4000, seed=3, end=END).orders
    daily = o.groupby(o["ordered_at"].dt.normalize()).size()
    daily = daily.reindex(pd.date_range(daily.index.min(), END, freq="D"), fill_value=0)
    singles_day = pd.Timestamp("2026-11-11")
    around = daily[singles_day - 45 * DAY: singles_day - 15 * DAY].mean()
    assert daily[singles_day] > 2 * around
    cny = pd.Timestamp("2026-02-17")
    assert daily[cny - 7 * DAY: cny + 6 * DAY].mean() < 0.7 * daily[cny + 20 * DAY: cny + 50 * DAY].mean()


def _counts(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}


def test_write_world_loads_everything_and_refuses_a_second_world(tmp_path) -> None:
    small = generate_world(500, days=365, seed=4, end=END)
    engine = open_warehouse(f"sqlite:///{tmp_path / 'warehouse.db'}", create=True)
    written = write_world(engine, small)
    expected = {t: len(getattr(small, t)) for t in TABLES}
    assert written == expected == _counts(engine)
    back = pd.read_sql("SELECT * FROM customers ORDER BY customer_id", engine, parse_dates=["signed_up_at"])
    assert back["signed_up_at"].tolist() == small.customers["signed_up_at"].tolist()
    assert back["birthday"].isna().sum() == small.customers["birthday"].isna().sum()

    with pytest.raises(WarehouseError) as raised:
        write_world(engine, generate_world(10, days=30, seed=5, end=END))
    assert raised.value.code == "L410" and "already has 500 customers" in raised.value.message
    assert "--db" in raised.value.hint
    assert _counts(engine) == expected


def test_a_failed_write_leaves_nothing_behind(tmp_path) -> None:
    broken = generate_world(300, days=365, seed=6, end=END)
    broken.orders.loc[1, "order_id"] = broken.orders.loc[0, "order_id"]  # primary key clash
    engine = open_warehouse(f"sqlite:///{tmp_path / 'warehouse.db'}", create=True)
    with pytest.raises(Exception):
        write_world(engine, broken)
    assert _counts(engine) == dict.fromkeys(TABLES, 0)
    with engine.connect() as conn:  # the indexes dropped for loading came back with the rollback
        names = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'index'"))}
    assert {"ix_orders_customer_time", "ix_events_customer_time", "ix_consents_customer"} <= names


@pytest.mark.postgres
def test_write_world_on_postgres() -> None:
    url = os.environ.get("LIFECYCLE_TEST_PG_URL")
    if not url:
        pytest.skip("set LIFECYCLE_TEST_PG_URL to a PostgreSQL database to run this")
    schema_name = f"lifecycle_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema_name}"'))
    try:
        sep = "&" if "?" in url else "?"
        engine = open_warehouse(f"{url}{sep}options=-csearch_path%3D{schema_name}")
        small = generate_world(500, days=365, seed=4, end=END)
        assert write_world(engine, small) == {t: len(getattr(small, t)) for t in TABLES} == _counts(engine)
        back = pd.read_sql("SELECT customer_id, birthday FROM customers ORDER BY customer_id", engine)
        assert back["birthday"].tolist() == small.customers["birthday"].tolist()
        with pytest.raises(WarehouseError):
            write_world(engine, small)
        engine.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema_name}" CASCADE'))
        admin.dispose()
