"""CSV import: every problem reported by line and column, nothing written unless the whole file is good."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from infra.errors import UsageError
from infra.warehouse.csvimport import parse_type_mapping, read
from infra.warehouse.csvload import Imported, import_file, load
from infra.warehouse.db import open_warehouse, upgrade
from infra.warehouse.schema import customers, orders


@pytest.fixture
def engine(any_url):
    engine = open_warehouse(any_url, create=True)
    upgrade(engine)
    return engine


def _count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_bad_rows_are_reported_by_line_and_nothing_is_imported(engine, tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("order_id,customer_id,ordered_at,amount,note\n"
                    "o1,c1,2026-03-01,12.50,fine\n"
                    "o2,c2,03/12/2026,12,bad date\n"
                    "o3,c3,2026-03-02,¥12,currency\n"
                    "o4,,2026-03-02,1,no customer\n"
                    "o5,c5,2026-03-02,-4.00,refund\n"
                    "o1,c6,2026-03-03,1,duplicate id\n")
    with pytest.raises(UsageError) as err:
        import_file(engine, "orders", path)
    text = err.value.render()
    assert err.value.exit_code == 2 and "nothing was imported" in text
    for line in ("orders.csv:3: column ordered_at: not an ISO 8601 date or datetime: '03/12/2026'",
                 "orders.csv:4: column amount: not a number: '¥12'",
                 "orders.csv:5: column customer_id: empty (required)",
                 "orders.csv:6: column amount: negative (-4.00): refunds are not orders",
                 "orders.csv:7: column order_id: 'o1' repeats line 2"):
        assert line in text
    assert _count(engine, orders) == 0


def test_many_problems_are_capped_with_a_count(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("customer_id,ordered_at,amount\n" + "c1,yesterday,1\n" * 30)
    with pytest.raises(UsageError) as err:
        read("orders", path)
    text = err.value.render()
    assert "30 problems" in text and "... and 10 more problems" in text and "orders.csv:21:" in text


def test_good_file_loads_with_timezones_generated_ids_and_column_mapping(engine, tmp_path):
    path = tmp_path / "shop.csv"
    path.write_text("buyer,when,amount,store\n"
                    "c1,2026-03-01T10:00:00+08:00,12.5,north\n"
                    "c1,2026-03-01,12.5,north\n"
                    "c2,2026-03-02T23:30:00Z,0,south\n")
    mapping = {"buyer": "customer_id", "when": "ordered_at"}
    # orders of customers the warehouse does not have are refused, unless asked to create them
    with pytest.raises(UsageError, match="3 orders of 2 customers the warehouse does not have") as err:
        import_file(engine, "orders", path, mapping)
    assert err.value.code == "L347" and "shop.csv:4: column customer_id: 'c2' is not a customer" in err.value.render()
    done = load(engine, "orders", path, mapping, create_customers=True)
    assert (done.rows, done.created_customers) == (3, 2)
    with engine.connect() as conn:
        rows = conn.execute(select(orders).order_by(orders.c.ordered_at)).mappings().all()
        created = dict(conn.execute(select(customers.c.customer_id, customers.c.signed_up_at)).all())
    assert created == {"c1": dt.datetime(2026, 3, 1, 0, 0), "c2": dt.datetime(2026, 3, 2, 23, 30)}
    assert rows[0]["ordered_at"] == dt.datetime(2026, 3, 1, 0, 0) and rows[1]["ordered_at"] == dt.datetime(2026, 3, 1, 2, 0)
    assert len({r["order_id"] for r in rows}) == 3 and all(r["order_id"].startswith("csv-") for r in rows)
    # the same file again: its generated ids are already there with the same values, so nothing is imported twice
    assert load(engine, "orders", path, mapping) == Imported(0, skipped=3)
    assert _count(engine, orders) == 3


def test_customers_and_missing_columns(engine, tmp_path):
    path = tmp_path / "customers.csv"
    path.write_text("customer_id,signed_up_at,member_tier,points\nc1,2025-01-01,Gold,120\nc2,2025-02-01,,\n")
    assert import_file(engine, "customers", path) == 2
    with engine.connect() as conn:
        tiers = dict(conn.execute(select(customers.c.customer_id, customers.c.member_tier)).all())
    assert tiers == {"c1": "gold", "c2": None}
    bad = tmp_path / "no_amount.csv"
    bad.write_text("customer_id,ordered_at\nc1,2026-01-01\n")
    with pytest.raises(UsageError, match=r"no_amount.csv:1: missing column amount"):
        read("orders", bad)


# ---- files that are not clean CSV: one clear line each, never a traceback ----------------------

@pytest.mark.parametrize("content, code, expected", [
    (b"customer_id,ordered_at,amount\nc1,2026-01-01,1\nc2,2026-01-02,1,5\n", "L345",
     "orders.csv:3: 4 fields where the header has 3"),
    (b"customer_id,ordered_at,amount\nc1,2026-01-01\n", "L345", "orders.csv:2: 2 fields where the header has 3"),
    ("customer_id,ordered_at,amount\nc1,2026-01-01,1\n\u5f20\u4e09,2026-01-02,1\n".encode("gbk"), "L342",
     "orders.csv:3: not UTF-8 text (byte 0xd5)"),
    (b"", "L341", "the file is empty (no header row)"),
    (b"\n\n", "L341", "the file is empty (no header row)"),
    (b"customer_id,ordered_at,amount\nc1,2026-01-01,1\nc2,\"2026-01-02,1\nc3,2026-01-03,1\n", "L343",
     "orders.csv:3: a quoted value starts on this line and its closing quote (\") is missing"),
    (b"customer_id,ordered_at,amount,amount\nc1,2026-01-01,1,2\n", "L344",
     "orders.csv:1: column 'amount' appears 2 times (columns 3, 4)"),
])
def test_malformed_files_are_refused_with_their_line(tmp_path, content, code, expected):
    path = tmp_path / "orders.csv"
    path.write_bytes(content)
    with pytest.raises(UsageError) as err:
        read("orders", path)
    assert err.value.code == code and err.value.exit_code == 2
    assert expected in err.value.render() and "nothing was imported" in err.value.render()


def test_a_mapping_that_makes_two_columns_one_is_refused(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("order_id,customer_id,ordered_at,amount\no1,c1,2026-01-01,1\n")
    with pytest.raises(UsageError) as err:
        read("orders", path, {"order_id": "customer_id"})
    assert err.value.code == "L344"
    assert "column 'customer_id' appears 2 times (columns 1, 2; made by --map order_id=customer_id)" in err.value.render()


def test_gbk_file_hint_says_how_to_convert(tmp_path):
    path = tmp_path / "customers.csv"
    path.write_bytes("customer_id,first_name\nc1,\u674e\u56db\n".encode("gbk"))
    with pytest.raises(UsageError) as err:
        read("customers", path)
    assert "iconv -f GB18030 -t UTF-8" in err.value.render()


def test_blank_lines_and_quoted_line_breaks_keep_line_numbers(tmp_path):
    path = tmp_path / "customers.csv"
    path.write_text('customer_id,first_name,timezone\n\nc1,"two\nlines",UTC\nc2,Ann,Mars/Base\n\n')
    with pytest.raises(UsageError) as err:
        read("customers", path)
    text = err.value.render()
    assert "customers.csv:3: column first_name: contains a control character ('\\n' at character 4)" in text
    assert "customers.csv:5: column timezone: 'Mars/Base' is not a timezone zoneinfo knows" in text
    assert "2 problems" in text


# ---- values the warehouse or a later step cannot hold ------------------------------------------

def test_orders_values_later_steps_cannot_hold_are_refused(tmp_path):
    path = tmp_path / "orders.csv"
    long_id = "c" * 65
    path.write_text("customer_id,ordered_at,amount,items,channel\n"
                    "c1,0001-01-01,1,1,app\n"                     # 2: before pandas' nanosecond range
                    "c1,9999-12-31T00:00:00Z,1,1,app\n"           # 3: a placeholder for "never"
                    "c1,2026-01-01,inf,1,app\n"                   # 4
                    "c1,2026-01-01,1e400,1,app\n"                 # 5: overflows to infinity
                    "c1,2026-01-01,nan,1,app\n"                   # 6
                    "c1,2026-01-01,12345678901,1,app\n"           # 7: beyond NUMERIC(12, 2)
                    "c\x001,2026-01-01,1,1,app\n"                 # 8: NUL in an id
                    f"{long_id},2026-01-01,1,1,app\n"             # 9
                    "c1,2026-01-01,1,99999999999,app\n"           # 10: beyond INTEGER
                    "c1,2026-01-01,1,inf,app\n"                   # 11
                    "c1,2026-01-01,1,1," + "x" * 33 + "\n")       # 12: channel is VARCHAR(32)
    with pytest.raises(UsageError) as err:
        read("orders", path)
    text = err.value.render()
    assert err.value.code == "L320" and "11 problems" in text
    for line in (
        "orders.csv:2: column ordered_at: '0001-01-01' is outside the dates lifecycle works with (1900-01-01 to "
        "2200-01-01); a placeholder such as 0001-01-01 or 9999-12-31 is not a date: correct it or leave the row out",
        "orders.csv:3: column ordered_at: '9999-12-31T00:00:00Z' is outside the dates lifecycle works with",
        "orders.csv:4: column amount: not a finite number: 'inf'",
        "orders.csv:5: column amount: not a finite number: '1e400'",
        "orders.csv:6: column amount: not a number: 'nan'",
        "orders.csv:7: column amount: 12345678901 is beyond what the warehouse holds (up to 9,999,999,999.99)",
        "orders.csv:8: column customer_id: contains a control character ('\\x00' at character 2)",
        "orders.csv:9: column customer_id: longer than 64 characters (65): the warehouse's orders.customer_id holds 64",
        "orders.csv:10: column items: 99999999999 is beyond what the warehouse holds (whole numbers up to 2,147,483,647)",
        "orders.csv:11: column items: not a finite number: 'inf'",
        "orders.csv:12: column channel: longer than 32 characters (33): the warehouse's orders.channel holds 32",
    ):
        assert line in text, line


def test_customers_timezones_emails_phones_and_birthdays_are_checked(tmp_path):
    path = tmp_path / "customers.csv"
    path.write_text("customer_id,signed_up_at,timezone,email,phone,birthday\n"
                    "c1,2025-01-01,Asia/Shanghia,a@shop.example,+86 138-0013-8000,1990-05-01\n"
                    "c2,2025-01-01,America,a@@b.cn,12345,0001-01-01\n"
                    "c3,2025-01-01,UTC,\"a@b.cn\nBcc: x@y.z\",(010) 6552-9988,\n"
                    "c4,2025-01-01,../../etc/passwd,no-at-sign,call me,\n"
                    "c5,2025-01-01,UTC,a b@c.com,,\n"
                    "c6,2025-01-01,UTC,a@localhost,,\n")
    with pytest.raises(UsageError) as err:
        read("customers", path)
    text = err.value.render()
    for line in (
        "customers.csv:2: column timezone: 'Asia/Shanghia' is not a timezone zoneinfo knows (did you mean "
        "'Asia/Shanghai'?)",
        "customers.csv:3: column timezone: 'America' is not a timezone zoneinfo knows",
        "customers.csv:3: column email: 'a@@b.cn' is not an email address",
        "customers.csv:3: column phone: '12345' is not a phone number (6 to 15 digits with an optional leading +; "
        "spaces, dashes, dots and brackets are removed)",
        "customers.csv:3: column birthday: '0001-01-01' is outside the dates lifecycle works with (1900-01-01 to "
        "2200-01-01); a placeholder such as 0001-01-01 or 9999-12-31 is not a date: correct it or leave it empty",
        "customers.csv:4: column email: contains a control character ('\\n' at character 7)",
        "customers.csv:6: column timezone: '../../etc/passwd' is not a timezone",
        "customers.csv:6: column email: 'no-at-sign' is not an email address",
        "customers.csv:6: column phone: 'call me' is not a phone number",
        "customers.csv:7: column email: 'a b@c.com' is not an email address",
        "customers.csv:8: column email: 'a@localhost' is not an email address",
    ):
        assert line in text, line
    assert "11 problems" in text
    good = tmp_path / "good.csv"
    good.write_text("customer_id,signed_up_at,email,phone\nc1,2025-01-01,a@shop.example,+86 138-0013-8000\n"
                    "c2,2025-01-01,,(010) 6552.9988\n")
    frame = read("customers", good)
    assert frame["phone"].tolist() == ["+8613800138000", "01065529988"]


def test_unknown_event_types_are_refused_unless_mapped(engine, tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("customer_id,occurred_at,type\n" + "c1,2026-01-01,page_view\n" * 3
                    + "c1,2026-01-02,app.visit\nc1,2026-01-03,order.placed\nc1,2026-01-04,app_visit\n")
    with pytest.raises(UsageError) as err:
        read("events", path)
    text = err.value.render()
    assert "5 problems" in text
    assert ("events.csv:2: column type: 'page_view' (3 rows, the first on this line): not an event type lifecycle "
            "knows; map it with --map-type page_view=app.visit, or leave those rows out") in text
    assert "events.csv:6: column type: 'order.placed' (1 row, the first on this line): orders are imported as orders" in text
    assert "events.csv:7: column type: 'app_visit' (1 row, the first on this line): not an event type lifecycle " \
           "knows (did you mean 'app.visit'?)" in text
    types = parse_type_mapping(["page_view=product.view", "app_visit=app.visit"])
    with pytest.raises(UsageError, match="1 problem in the events file"):
        read("events", path, type_map=types)
    path.write_text(path.read_text().replace("c1,2026-01-03,order.placed\n", ""))
    assert read("events", path, type_map=types)["type"].tolist() == ["product.view"] * 3 + ["app.visit"] * 2
    with pytest.raises(UsageError) as err:
        parse_type_mapping(["page_view=product_view"])
    assert err.value.code == "L346" and "did you mean 'product.view'?" in err.value.render()
    # events of customers the warehouse lacks: refused like orders, or their customers created
    with pytest.raises(UsageError) as err:
        import_file(engine, "events", path, type_map=types)
    assert err.value.code == "L347" and "5 events of 1 customer the warehouse does not have" in err.value.render()
    assert load(engine, "events", path, type_map=types, create_customers=True) == Imported(5, 1)
