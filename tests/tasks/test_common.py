"""Which task failures are retried: only what a retry can fix, one test per kind of error.

Before, every OperationalError was retried, "file is not a database" and "no such table" included, and
the extract task retried everything (an OutOfBoundsDatetime twice).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from types import SimpleNamespace

import psycopg2
import psycopg2.errors
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DisconnectionError, IntegrityError, OperationalError

from infra.errors import WarehouseError
from infra.warehouse.db import is_transient
from tasks.common import IO_RETRIES, transient
from tasks.extract import extract


def _wrapped(orig: BaseException) -> OperationalError:
    """The error as SQLAlchemy hands it to a task."""
    return OperationalError("SELECT 1", {}, orig)


def _retried(exc: BaseException) -> bool:
    return transient(None, None, SimpleNamespace(data=exc))


def test_the_extract_task_retries_only_transient_errors():
    assert extract.retries == IO_RETRIES["retries"] and extract.retry_condition_fn is transient


# ---- SQLite: real errors -----------------------------------------------------------------------

def test_sqlite_busy_is_retried(tmp_path):
    path = tmp_path / "w.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, timeout=0)
    with pytest.raises(sqlite3.OperationalError) as err:
        other.execute("INSERT INTO t VALUES (1)")
    assert "database is locked" in str(err.value)
    assert is_transient(err.value) and _retried(_wrapped(err.value))
    holder.rollback()


def test_sqlite_table_locked_is_retried():
    locked = sqlite3.OperationalError("database table is locked")
    locked.sqlite_errorcode = 6  # SQLITE_LOCKED (shared-cache connections)
    assert _retried(_wrapped(locked))
    assert _retried(_wrapped(sqlite3.OperationalError("database is locked")))  # an older driver: no code


def test_sqlite_missing_table_is_not_retried(tmp_path):
    con = sqlite3.connect(tmp_path / "w.db")
    with pytest.raises(sqlite3.OperationalError) as err:
        con.execute("SELECT * FROM orders")
    assert "no such table" in str(err.value) and not _retried(_wrapped(err.value))


def test_sqlite_file_that_is_no_database_is_not_retried(tmp_path):
    path = tmp_path / "w.db"
    path.write_bytes(b"\x8f\x13 not sqlite at all " * 200)
    with pytest.raises(sqlite3.DatabaseError) as err:
        sqlite3.connect(path).execute("SELECT * FROM sqlite_master")
    assert "file is not a database" in str(err.value) and not _retried(_wrapped(err.value))


def test_sqlite_constraint_and_syntax_errors_are_not_retried(tmp_path):
    con = sqlite3.connect(tmp_path / "w.db")
    con.execute("CREATE TABLE t (x PRIMARY KEY)")
    con.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.IntegrityError) as dup:
        con.execute("INSERT INTO t VALUES (1)")
    assert not _retried(IntegrityError("INSERT", {}, dup.value))
    with pytest.raises(sqlite3.OperationalError) as syntax:
        con.execute("SELEC 1")
    assert not _retried(_wrapped(syntax.value))


# ---- PostgreSQL: by SQLSTATE (the classes psycopg2 raises for them) ------------------------------

@pytest.mark.parametrize("error, retried", [
    (psycopg2.errors.SerializationFailure("could not serialize access due to concurrent update"), True),
    (psycopg2.errors.DeadlockDetected("deadlock detected"), True),
    (psycopg2.errors.LockNotAvailable("canceling statement due to lock timeout"), True),
    (psycopg2.errors.AdminShutdown("terminating connection due to administrator command"), True),
    (psycopg2.errors.CannotConnectNow("the database system is starting up"), True),
    (psycopg2.errors.TooManyConnections("sorry, too many clients already"), True),
    (psycopg2.errors.ConnectionFailure("connection failure"), True),
    (psycopg2.OperationalError("server closed the connection unexpectedly\n\tThis probably means ..."), True),
    (psycopg2.OperationalError('connection to server at "db" (10.0.0.5), port 5432 failed: Connection refused'), True),
    (psycopg2.InterfaceError("connection already closed"), True),
    (psycopg2.errors.UndefinedTable('relation "orders" does not exist'), False),
    (psycopg2.errors.QueryCanceled("canceling statement due to statement timeout"), False),
    (psycopg2.errors.NumericValueOutOfRange("numeric field overflow"), False),
    (psycopg2.errors.DiskFull("could not extend file"), False),
    (psycopg2.OperationalError('FATAL:  password authentication failed for user "ops"'), False),
])
def test_postgres_errors_by_sqlstate(error, retried):
    assert _retried(_wrapped(error)) is retried


def test_lost_connections_and_timeouts_are_retried_our_errors_are_not():
    assert _retried(DisconnectionError("pre-ping failed")) and _retried(TimeoutError()) and _retried(ConnectionResetError())
    invalidated = OperationalError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
    assert _retried(invalidated)
    # another driver's error: by its message
    assert _retried(_wrapped(Exception("server closed the connection unexpectedly")))
    assert _retried(_wrapped(Exception("Lock wait timeout exceeded; try restarting transaction")))
    assert not _retried(_wrapped(Exception("Table 'shop.orders' doesn't exist")))
    assert not _retried(WarehouseError("the warehouse has no table orders", code="L413"))
    assert not _retried(ValueError("Out of bounds nanosecond timestamp"))


# ---- PostgreSQL: real errors from a server -------------------------------------------------------

@pytest.fixture
def pg(pg_url):
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id int PRIMARY KEY, x int)"))
        conn.execute(text("INSERT INTO t VALUES (1, 0), (2, 0)"))
    yield engine
    engine.dispose()


def _caught(fn) -> BaseException:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the point is which error it is
        return exc
    raise AssertionError("no error")


def test_postgres_lock_timeout_is_retried(pg):
    with pg.connect() as holder, pg.connect() as waiter:
        holder.execute(text("LOCK TABLE t IN ACCESS EXCLUSIVE MODE"))
        waiter.execute(text("SET lock_timeout = '100ms'"))
        exc = _caught(lambda: waiter.execute(text("SELECT * FROM t")))
    assert exc.orig.pgcode == "55P03" and _retried(exc)


def test_postgres_serialization_failure_is_retried(pg):
    with pg.connect() as a, pg.connect() as b:
        for conn in (a, b):
            conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            conn.execute(text("SELECT x FROM t WHERE id = 1")).scalar()
        a.execute(text("UPDATE t SET x = 1 WHERE id = 1"))
        a.commit()
        exc = _caught(lambda: b.execute(text("UPDATE t SET x = 2 WHERE id = 1")))
    assert exc.orig.pgcode == "40001" and _retried(exc)


def test_postgres_deadlock_is_retried(pg):
    found: list[BaseException] = []
    with pg.connect() as a, pg.connect() as b:
        a.execute(text("SET deadlock_timeout = '100ms'"))
        b.execute(text("SET deadlock_timeout = '100ms'"))
        a.execute(text("UPDATE t SET x = 1 WHERE id = 1"))
        b.execute(text("UPDATE t SET x = 1 WHERE id = 2"))

        def cross(conn, row):
            try:
                conn.execute(text(f"UPDATE t SET x = 2 WHERE id = {row}"))
            except Exception as exc:  # noqa: BLE001
                found.append(exc)
                conn.rollback()

        other = threading.Thread(target=cross, args=(a, 2))
        other.start()
        time.sleep(0.2)
        cross(b, 1)
        other.join(10)
    assert [e.orig.pgcode for e in found] == ["40P01"] and _retried(found[0])


def test_postgres_connection_lost_is_retried_a_missing_table_is_not(pg):
    with pg.connect() as victim, pg.connect() as admin:
        pid = victim.execute(text("SELECT pg_backend_pid()")).scalar_one()
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        time.sleep(0.2)
        exc = _caught(lambda: victim.execute(text("SELECT 1")))
    assert _retried(exc)
    with pg.connect() as conn:
        missing = _caught(lambda: conn.execute(text("SELECT * FROM no_such_table")))
    assert not _retried(missing)
