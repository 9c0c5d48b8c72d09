"""Connect to the warehouse, keep its schema current with Alembic, and fail with one clear line.

A damaged warehouse is a WarehouseError, never a traceback, whichever command meets it: a file that is
not a SQLite database (L411), a truncated or corrupted one (L412), a table (L413) or column (L414) that
was dropped. `open_warehouse` probes the file before anything else reads it, `ensure_current` checks
every table and column a run reads, and the engine translates the same errors when they surface later
(a table dropped while a run goes on). `is_transient` tells the errors a retry can fix (a lost
connection, a lock or busy timeout, a serialization failure or deadlock) from those it cannot.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, func, inspect, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (ArgumentError, DBAPIError, DisconnectionError, NoSuchModuleError, OperationalError,
                            SQLAlchemyError)

from infra.errors import UsageError, WarehouseError
from infra.redact import mask_url
from infra.warehouse import schema

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def display_url(url: str) -> str:
    """The URL with any password masked, safe for messages and logs."""
    try:
        return mask_url(make_url(url).render_as_string(hide_password=True))
    except ArgumentError:
        return mask_url(url)


def open_warehouse(url: str, *, create: bool = False) -> Engine:
    """An engine for `url`, connected once to prove it works; `create` allows a new SQLite file."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UsageError(
            f"not a database URL: {url!r}",
            hint="use a SQLAlchemy URL such as sqlite:///path/warehouse.db or postgresql://user@host/db",
            code="L301",
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database).expanduser()
        if not path.exists():
            if not create:
                raise WarehouseError(
                    f"no warehouse at {path}",
                    hint="run `lifecycle demo` or `lifecycle data generate --customers 10000` to create one, "
                    "or point --db / LIFECYCLE_DB_URL at an existing warehouse",
                    code="L401",
                )
            path.parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(parsed, pool_pre_ping=True)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise UsageError(f"no database driver for {display_url(url)}: {exc}",
                         hint="install the driver for this database (PostgreSQL: psycopg2-binary)",
                         code="L302") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    shown = display_url(url)

    def translate(context) -> None:  # every statement's error: damage becomes one clear line
        found = damage(context.original_exception, shown)
        if found is not None:
            raise found

    event.listen(engine, "handle_error", translate)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                _probe_sqlite(conn)
    except DBAPIError as exc:
        found = damage(exc, shown)
        if found is not None:
            raise found from None
        if not isinstance(exc, OperationalError):
            raise
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc).splitlines()[0]
        raise WarehouseError(
            f"cannot connect to the warehouse at {shown}: {reason}",
            hint="check that the database is running and the URL is right (--db or LIFECYCLE_DB_URL)",
            code="L402",
        ) from None
    return engine


def _probe_sqlite(conn) -> None:
    """Read the file's catalog now, so random bytes (L411) or a truncated copy (L412; SQLite compares the
    size its header states with the file's) fail before a command starts its work."""
    conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()


DAMAGED_HINT = ("restore the file from a backup (`sqlite3 FILE .recover | sqlite3 NEW.db` may save what is left); "
                "or point --db / LIFECYCLE_DB_URL at another warehouse")
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26
SQLITE_TRANSIENT = {5, 6, 15}  # SQLITE_BUSY, SQLITE_LOCKED, SQLITE_PROTOCOL (a WAL lock race)
# SQLSTATEs a retry can fix: serialization failure, deadlock, lock timeout, the server shutting down or
# starting, too many connections (and every connection exception, class 08)
PG_TRANSIENT = {"40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300"}
PG_CONNECTION = ("08000", "08001", "08003", "08004", "08006", "08007", "08P01")
# psycopg2 raises a lost connection without a SQLSTATE: these are its messages for one
PG_LOST = ("server closed the connection", "terminating connection", "could not connect", "connection refused",
           "connection already closed", "connection not open", "could not receive data", "could not send data",
           "connection timed out", "timeout expired", "ssl connection has been closed", "no connection to the server")

OTHER_TRANSIENT = (*PG_LOST, "database is locked", "deadlock", "could not serialize", "lock wait timeout")


def _original(exc: BaseException) -> BaseException:
    return getattr(exc, "orig", None) or exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def damage(exc: BaseException, where: str = "the configured URL") -> WarehouseError | None:
    """The WarehouseError a database error means when the warehouse itself is damaged, else None."""
    orig = _original(exc)
    message = _first_line(orig)
    code = getattr(orig, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    pgcode = getattr(orig, "pgcode", None)
    if primary == SQLITE_NOTADB or "file is not a database" in message:
        return WarehouseError(
            f"the warehouse at {where} is not a SQLite database (file is not a database): the file holds something "
            "else, or was overwritten", hint=DAMAGED_HINT + "; `lifecycle data generate` or `lifecycle db upgrade` "
            "creates a new warehouse at a path where no file is", code="L411")
    if primary == SQLITE_CORRUPT or "malformed" in message:
        return WarehouseError(f"the warehouse at {where} is damaged ({message}): the file is truncated or corrupted",
                              hint=DAMAGED_HINT, code="L412")
    table = re.search(r"no such table: (\S+)", message) or (
        pgcode == "42P01" and re.search(r'relation "([^"]+)" does not exist', message))
    if table:
        return WarehouseError(f"the warehouse at {where} has no table {table.group(1)}, which lifecycle needs: it was "
                              "dropped or renamed", hint=MISSING_HINT, code="L413")
    column = re.search(r"no such column: (\S+)", message) or (
        pgcode == "42703" and re.search(r'column "?([^" ]+)"? does not exist', message))
    if column:
        return WarehouseError(f"the warehouse at {where} has no column {column.group(1)}, which lifecycle needs: it "
                              "was dropped or renamed", hint=MISSING_HINT, code="L414")
    return None


MISSING_HINT = ("restore it from a backup of the warehouse; `lifecycle db upgrade` does not recreate what a migration "
                "already made")


def is_transient(exc: BaseException) -> bool:
    """Whether a retry can fix this error: a lost connection, a lock or busy timeout, a serialization
    failure or deadlock. A damaged file, a missing table, bad SQL or bad data fail the same way again.
    SQLite by its error code, psycopg2 by SQLSTATE (or its message for a lost connection), any other
    driver's OperationalError by its message."""
    if isinstance(exc, (TimeoutError, ConnectionError, DisconnectionError)):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    orig = _original(exc)
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF in SQLITE_TRANSIENT
        return any(m in _first_line(orig) for m in ("database is locked", "database table is locked"))
    try:
        import psycopg2
        import psycopg2.errors
    except ImportError:  # pragma: no cover - psycopg2 is a dependency
        return False
    if isinstance(orig, psycopg2.Error):
        pgcode = getattr(orig, "pgcode", None) or next(
            (c for c in (*PG_TRANSIENT, *PG_CONNECTION) if isinstance(orig, psycopg2.errors.lookup(c))), None)
        if pgcode is not None:
            return pgcode in PG_TRANSIENT or pgcode.startswith("08")
        return isinstance(orig, (psycopg2.OperationalError, psycopg2.InterfaceError)) and any(
            m in _first_line(orig).lower() for m in PG_LOST)
    # another driver: an OperationalError whose message says the connection was lost, or a lock or deadlock
    return isinstance(exc, OperationalError) and any(m in _first_line(orig).lower() for m in OTHER_TRANSIENT)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets a reader (the UI, `report`) look while a run writes; busy_timeout waits instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _alembic_config(connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the schema to the newest migration; returns (before, after) revisions."""
    before = current_revision(engine)
    head = head_revision()
    if before == head:
        return before, head
    script = ScriptDirectory(str(MIGRATIONS))
    known = {rev.revision for rev in script.walk_revisions()}
    if before is not None and before not in known:
        raise WarehouseError(
            f"the warehouse schema is at revision {before}, which this version of lifecycle does not know",
            hint="upgrade lifecycle to the version that wrote this warehouse",
            code="L403",
        )
    if before is None:
        existing = set(inspect(engine).get_table_names()) & set(schema.metadata.tables)
        if existing:
            raise WarehouseError(
                f"the database has lifecycle tables ({', '.join(sorted(existing))}) but no migration record",
                hint="point --db at an empty database or at a warehouse lifecycle created",
                code="L404",
            )
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "head")
    return before, head


def ensure_current(engine: Engine) -> None:
    """Refuse to run on a warehouse whose schema is missing or behind (upgrading is explicit or by `data`),
    or whose tables or columns were dropped since (L413, L414)."""
    rev = current_revision(engine)
    if rev is None:
        raise WarehouseError(
            "the warehouse has no lifecycle tables yet",
            hint="run `lifecycle data generate --customers 10000` (demo data) or `lifecycle db upgrade`",
            code="L405",
        )
    if rev != head_revision():
        upgrade(engine)
    check_tables(engine)


def check_tables(engine: Engine) -> None:
    """Every table and column of schema.py is there (a few catalog reads): a table dropped by hand is one
    clear line before a run starts, not an error halfway through it."""
    shown = display_url(str(engine.url))
    found = inspect(engine)
    present = set(found.get_table_names())
    missing = [name for name in schema.metadata.tables if name not in present]
    if missing:
        raise WarehouseError(f"the warehouse at {shown} has no table{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(missing)}, which lifecycle needs: dropped or renamed since its schema was "
                             f"made (revision {current_revision(engine)})", hint=MISSING_HINT, code="L413")
    for name, table in schema.metadata.tables.items():
        columns = {c["name"] for c in found.get_columns(name)}
        lacking = [c.name for c in table.columns if c.name not in columns]
        if lacking:
            raise WarehouseError(f"the warehouse at {shown}: table {name} has no column{'s' if len(lacking) > 1 else ''}"
                                 f" {', '.join(lacking)}, which lifecycle needs", hint=MISSING_HINT, code="L414")


def require_customers(engine: Engine) -> int:
    """The number of customers; an empty warehouse is a clear error, not an empty run."""
    ensure_current(engine)
    try:
        with engine.connect() as conn:
            n = conn.execute(select(func.count()).select_from(schema.customers)).scalar_one()
    except SQLAlchemyError as exc:
        raise WarehouseError(f"cannot read customers: {exc.__class__.__name__}", code="L406") from None
    if n == 0:
        raise WarehouseError(
            "the warehouse has no customers",
            hint="run `lifecycle data generate --customers 10000` for a demo world",
            code="L407",
        )
    return n
