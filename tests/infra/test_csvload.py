"""Importing into a warehouse that already has data: customers upserted, history appended without losing a
withdrawal, consents and suppressions, the default timezone, and every problem counted and written out."""

from __future__ import annotations

import csv
import datetime as dt

import pytest
from sqlalchemy import select

from infra.errors import UsageError
from infra.warehouse import csvload
from infra.warehouse.csvload import DefaultZone, Imported, load
from infra.warehouse.db import open_warehouse, upgrade
from infra.warehouse.schema import consents, customers, orders, suppressions
from tasks.allocate import active_consents, suppressed_for


@pytest.fixture
def engine(any_url):
    engine = open_warehouse(any_url, create=True)
    upgrade(engine)
    return engine


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def _customers(engine) -> dict[str, dict]:
    with engine.connect() as conn:
        return {r["customer_id"]: dict(r) for r in conn.execute(select(customers)).mappings()}


def _people(engine, tmp_path, *ids: str) -> None:
    path = _write(tmp_path, "people.csv", "customer_id,signed_up_at,timezone\n"
                  + "".join(f"{c},2025-01-01,Asia/Shanghai\n" for c in ids))
    load(engine, "customers", path)


# ---- problems: counted by kind, the first 20 shown, all of them in --errors --------------------

def test_problems_are_counted_by_kind_and_every_one_is_written_to_the_errors_file(tmp_path):
    rows = ["c1,0001-01-01,1"] * 25 + ["c1,2026-01-01,¥12", "c1,2026-01-01,=HYPERLINK(\"x\")", "c1,2026-01-01,-"]
    path = _write(tmp_path, "orders.csv", "customer_id,ordered_at,amount\n" + "\n".join(rows) + "\n")
    errors = tmp_path / "problems.csv"
    with pytest.raises(UsageError) as err:
        load(None, "orders", path, errors=errors)
    text = err.value.render()
    assert ("28 problems in the orders file (25 ordered_at outside 1900-01-01 to 2200-01-01, 3 amount not a number); "
            "nothing was imported") in text
    assert text.count("\norders.csv:") == 20 and "... and 8 more problems" in text
    assert f"every problem is in {errors}" in text
    with open(errors, newline="", encoding="utf-8") as f:
        written = list(csv.reader(f))
    assert written[0] == ["line", "column", "value", "problem"] and len(written) == 29
    assert written[1][:3] == ["2", "ordered_at", "0001-01-01"] and "outside the dates" in written[1][3]
    # the user's own values, with what a spreadsheet would run as a formula defused
    assert [r[2] for r in written[-3:]] == ["¥12", "'=HYPERLINK(\"x\")", "'-"]


def test_a_file_refused_whole_is_written_to_the_errors_file_too(tmp_path):
    path = _write(tmp_path, "orders.csv", "customer_id,amount\nc1,1\n")
    errors = tmp_path / "problems.csv"
    with pytest.raises(UsageError, match="missing column ordered_at"):
        load(None, "orders", path, errors=errors)
    written = list(csv.reader(errors.open(newline="")))
    assert written[1][0] == "1" and written[1][3].startswith("missing column ordered_at")


def test_a_good_file_leaves_an_errors_file_with_its_header_only(engine, tmp_path):
    errors = tmp_path / "problems.csv"
    _write(tmp_path, "c.csv", "customer_id,signed_up_at\nc1,2025-01-01\n")
    load(engine, "customers", tmp_path / "c.csv", errors=errors)
    assert errors.read_text().splitlines() == ["line,column,value,problem"]


# ---- customers: a re-import updates them -------------------------------------------------------

def test_reimporting_customers_updates_the_columns_the_file_has(engine, tmp_path):
    first = _write(tmp_path, "c.csv", "customer_id,signed_up_at,timezone,member_tier,points,email\n"
                   "c1,2025-01-01,UTC,silver,100,a@shop.example\nc2,2025-02-01,UTC,gold,50,b@shop.example\n")
    assert load(engine, "customers", first) == Imported(2)
    fix = _write(tmp_path, "fix.csv", "customer_id,timezone,member_tier,points\n"
                 "c1,Asia/Shanghai,Gold,120\nc2,Asia/Shanghai,gold,\n")
    done = load(engine, "customers", fix)
    assert (done.rows, done.updated) == (2, 2)
    assert any("empty cells cleared points for 1 customer" in w for w in done.warnings)
    got = _customers(engine)
    assert {c: (r["timezone"], r["member_tier"], r["points"]) for c, r in got.items()} == {
        "c1": ("Asia/Shanghai", "gold", 120), "c2": ("Asia/Shanghai", "gold", None)}
    # columns the file does not have keep their values, and so does an empty sign-up time
    assert got["c1"]["email"] == "a@shop.example" and got["c2"]["signed_up_at"] == dt.datetime(2025, 2, 1)
    again = _write(tmp_path, "again.csv", "customer_id,signed_up_at,email\nc2,,\nc3,2025-03-01,\n")
    done = load(engine, "customers", again)
    assert (done.rows, done.updated) == (2, 1)
    got = _customers(engine)
    assert got["c2"]["signed_up_at"] == dt.datetime(2025, 2, 1) and got["c2"]["email"] is None
    assert got["c3"]["timezone"] == "UTC"


def test_new_customers_need_a_sign_up_time_one_message_for_a_missing_column(engine, tmp_path):
    _people(engine, tmp_path, "c1")
    path = _write(tmp_path, "c.csv", "customer_id,points\nc1,5\n" + "".join(f"n{i},1\n" for i in range(30)))
    with pytest.raises(UsageError) as err:
        load(engine, "customers", path)
    text = err.value.render()
    assert text.count("\nc.csv:") == 1 and "1 problem in the customers file" in text
    assert ("c.csv:3: column signed_up_at: the file has no signed_up_at column, and 30 of its customers are not in "
            "the warehouse yet (the first on this line)") in text
    assert _customers(engine)["c1"]["points"] is None  # nothing was written


def test_a_customer_import_is_one_transaction(engine, tmp_path, monkeypatch):
    _people(engine, tmp_path, "c1")
    path = _write(tmp_path, "c.csv", "customer_id,signed_up_at,timezone\nc1,2025-01-01,Europe/Berlin\n"
                  "c2,2025-01-01,Europe/Berlin\n")

    def fail(*args, **kwargs):
        raise RuntimeError("connection lost")

    monkeypatch.setattr(csvload, "update_rows", fail)  # after the new customer is inserted
    with pytest.raises(RuntimeError):
        load(engine, "customers", path)
    assert {c: r["timezone"] for c, r in _customers(engine).items()} == {"c1": "Asia/Shanghai"}


def test_a_reimported_timezone_is_what_the_next_run_reads(any_url, tmp_path):
    """The incremental feature state keeps customers on PostgreSQL by row version: an update is seen."""
    from tasks.incremental import extract_incremental
    from tests.conftest import END, make_world

    world = make_world(any_url, customers=300, seed=5)
    raw, _ = extract_incremental(world, END - dt.timedelta(days=2))
    cid = str(raw.customers["customer_id"].iloc[0])
    before = raw.customers.set_index("customer_id").at[cid, "timezone"]
    zone = "America/New_York" if before != "America/New_York" else "Europe/Berlin"
    load(world, "customers", _write(tmp_path, "tz.csv", f"customer_id,timezone\n{cid},{zone}\n"))
    raw, how = extract_incremental(world, END - dt.timedelta(days=1))
    assert how == "advanced" and raw.customers.set_index("customer_id").at[cid, "timezone"] == zone


# ---- orders: history, appended ----------------------------------------------------------------

def test_an_order_already_there_is_skipped_when_the_same_and_refused_when_not(engine, tmp_path):
    _people(engine, tmp_path, "c1")
    path = _write(tmp_path, "o.csv", "order_id,customer_id,ordered_at,amount\no1,c1,2026-03-01,12.50\n")
    assert load(engine, "orders", path) == Imported(1)
    overlap = _write(tmp_path, "o2.csv", "order_id,customer_id,ordered_at,amount\no1,c1,2026-03-01,12.5\n"
                     "o2,c1,2026-03-02,3\n")
    assert load(engine, "orders", overlap) == Imported(1, skipped=1)
    changed = _write(tmp_path, "o3.csv", "order_id,customer_id,ordered_at,amount\no1,c1,2026-03-01T08:00:00,13\n")
    with pytest.raises(UsageError) as err:
        load(engine, "orders", changed)
    assert ("o3.csv:2: column order_id: 'o1' is already in the warehouse with another ordered_at, amount: orders are "
            "history, never overwritten") in err.value.render()
    with engine.connect() as conn:
        assert conn.execute(select(orders.c.order_id, orders.c.amount).order_by(orders.c.order_id)).all() == [
            ("o1", 12.5), ("o2", 3.0)]


# ---- consents ---------------------------------------------------------------------------------

def test_consent_rows_are_checked_like_every_other_file(engine, tmp_path):
    path = _write(tmp_path, "k.csv", "customer_id,channel,purpose,granted_at,withdrawn_at\n"
                  "c1,SMS,Marketing,2026-01-01,\n"
                  "c1,whatsapp,marketing,2026-01-01,\n"
                  "c1,email,ads,2026-01-01,\n"
                  "c1,push,marketing,2026-03-01,2026-02-01\n"
                  "c1,wecom,marketing,0001-01-01,\n"
                  "c1,sms,marketing,2026-01-01,\n")
    with pytest.raises(UsageError) as err:
        load(engine, "consents", path)
    text = err.value.render()
    for line in ("k.csv:3: column channel: 'whatsapp' is not one of sms, email, push, wecom",
                 "k.csv:4: column purpose: 'ads' is not one of marketing, service",
                 "k.csv:5: column withdrawn_at: '2026-02-01' is before granted_at '2026-03-01'",
                 "k.csv:6: column granted_at: '0001-01-01' is outside the dates lifecycle works with",
                 "k.csv:7: the same customer_id, channel, purpose, granted_at as line 2"):
        assert line in text, line
    path.write_text("customer_id,channel,granted_at\nc9,sms,2026-01-01\n")
    with pytest.raises(UsageError) as err:
        load(engine, "consents", path)
    assert err.value.code == "L347" and "1 consent of 1 customer the warehouse does not have" in err.value.render()
    done = load(engine, "consents", path, create_customers=True, default_timezone="Asia/Shanghai")
    assert (done.rows, done.created_customers) == (1, 1)
    assert "no purpose column: every row is a marketing consent" in done.warnings
    assert _customers(engine)["c9"]["timezone"] == "Asia/Shanghai"


def _in_force(engine, at: str) -> set[str]:
    held = active_consents(engine, ["c1", "c2"], {("sms", "marketing")}, dt.datetime.fromisoformat(at))
    return set(held.by_key.get(("sms", "marketing"), []))


def test_a_consent_reimport_never_loses_a_withdrawal(engine, tmp_path):
    _people(engine, tmp_path, "c1", "c2")
    grants = _write(tmp_path, "grants.csv", "customer_id,channel,purpose,granted_at\n"
                    "c1,sms,marketing,2026-01-01\nc2,sms,marketing,2026-01-01\n")
    assert load(engine, "consents", grants).rows == 2
    assert _in_force(engine, "2026-04-01") == {"c1", "c2"}
    # c1 withdraws in March: an export that says so ends the grant, whatever its own granted_at
    withdrawn = _write(tmp_path, "withdrawn.csv", "customer_id,channel,purpose,granted_at,withdrawn_at\n"
                       "c1,sms,marketing,2025-12-31T23:00:00,2026-03-01\n")
    done = load(engine, "consents", withdrawn)
    assert done.rows == 1 and "withdrawals in the file ended 1 grant the warehouse had open" in done.warnings
    assert _in_force(engine, "2026-04-01") == {"c2"}
    # the old grant file again: c1's withdrawal stays, nothing is added twice
    done = load(engine, "consents", grants)
    assert (done.rows, done.skipped) == (0, 2)
    assert any("the withdrawal is kept" in w for w in done.warnings)
    assert _in_force(engine, "2026-04-01") == {"c2"}
    # a new grant is a row of its own, after the withdrawal, which the warehouse keeps
    regrant = _write(tmp_path, "regrant.csv", "customer_id,channel,purpose,granted_at\nc1,sms,marketing,2026-05-01\n")
    assert load(engine, "consents", regrant).rows == 1
    assert _in_force(engine, "2026-04-01") == {"c2"} and _in_force(engine, "2026-06-01") == {"c1", "c2"}
    with engine.connect() as conn:
        kept = conn.execute(select(consents.c.granted_at, consents.c.withdrawn_at).where(consents.c.customer_id == "c1")
                            .order_by(consents.c.granted_at)).all()
    assert [w for _, w in kept] == [dt.datetime(2026, 3, 1), dt.datetime(2026, 3, 1), None]


# ---- suppressions -----------------------------------------------------------------------------

def test_suppressions_import_with_an_empty_channel_meaning_every_channel(engine, tmp_path):
    _people(engine, tmp_path, "c1", "c2")
    path = _write(tmp_path, "s.csv", "customer_id,channel,reason,created_at\nc1,,complaint,2026-01-01\n"
                  "c2,SMS,Hard_Bounce,2026-01-02\nc2,sms,bounced,2026-01-02\nc2,fax,manual,\n")
    with pytest.raises(UsageError) as err:
        load(engine, "suppressions", path)
    text = err.value.render()
    assert "s.csv:4: column reason: 'bounced' is not one of complaint, hard_bounce, manual" in text
    assert "s.csv:5: column channel: 'fax' is not one of sms, email, push, wecom" in text
    path.write_text("customer_id,channel,reason,created_at\nc1,,complaint,2026-01-01\nc2,SMS,Hard_Bounce,2026-01-02\n")
    assert load(engine, "suppressions", path) == Imported(2)
    assert load(engine, "suppressions", path) == Imported(0, skipped=2)  # an import never adds one twice
    held = suppressed_for(engine, ["c1", "c2"])
    assert ("c1", None) in held and ("c2", "sms") in held and ("c2", None) not in held
    with engine.connect() as conn:
        assert conn.execute(select(suppressions.c.reason).order_by(suppressions.c.customer_id)).scalars().all() == [
            "complaint", "hard_bounce"]


# ---- the default timezone ---------------------------------------------------------------------

def test_customers_without_a_timezone_get_the_default_and_the_import_says_so(engine, tmp_path):
    path = _write(tmp_path, "c.csv", "customer_id,signed_up_at\nc1,2026-03-01T10:00:00+08:00\n"
                  "c2,2026-03-01T11:00:00+08:00\n")
    done = load(engine, "customers", path)
    assert done.warnings == (
        "2 customers without a timezone: stored as UTC, so quiet hours and send times are judged in UTC for them; "
        "the signed_up_at values carry +08:00: import the file again with --default-timezone Asia/Shanghai (an "
        "import updates customers), and set defaults.timezone in lifecycle.yaml for the next ones",)
    # what the warning says to do corrects them
    done = load(engine, "customers", path, default_timezone="Asia/Shanghai")
    assert done.warnings == ("2 customers without a timezone: stored as Asia/Shanghai (--default-timezone)",)
    assert {r["timezone"] for r in _customers(engine).values()} == {"Asia/Shanghai"}
    # the configured default fills empty cells and new customers; the zones of customers already there stay
    path.write_text("customer_id,signed_up_at,timezone\nc3,2026-03-01,\n")
    load(engine, "customers", path, default_timezone=DefaultZone("Asia/Tokyo", "defaults.timezone"))
    path.write_text("customer_id,points\nc1,5\n")
    load(engine, "customers", path, default_timezone=DefaultZone("Asia/Tokyo", "defaults.timezone"))
    assert {c: r["timezone"] for c, r in _customers(engine).items()} == {
        "c1": "Asia/Shanghai", "c2": "Asia/Shanghai", "c3": "Asia/Tokyo"}


def test_zone_for_an_offset():
    winter, summer = dt.datetime(2026, 1, 15, tzinfo=dt.UTC), dt.datetime(2026, 7, 15, tzinfo=dt.UTC)
    assert csvload.zone_for_offset("+08:00", winter) == "Asia/Shanghai"
    assert csvload.zone_for_offset("+02:00", summer) == "Europe/Berlin"
    assert csvload.zone_for_offset("-05:00", winter) == "America/New_York"
    assert csvload.zone_for_offset("+05:45", winter) == "Asia/Kathmandu"
