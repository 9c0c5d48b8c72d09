"""Connect to the warehouse, keep its schema current with Alembic, and fail with one clear line."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, func, inspect, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError

from infra.errors import UsageError, WarehouseError
from infra.warehouse import schema

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def display_url(url: str) -> str:
    """The URL with any password masked, safe for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


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
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc).splitlines()[0]
        raise WarehouseError(
            f"cannot connect to the warehouse at {display_url(url)}: {reason}",
            hint="check that the database is running and the URL is right (--db or LIFECYCLE_DB_URL)",
            code="L402",
        ) from None
    return engine


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
    """Refuse to run on a warehouse whose schema is missing or behind; upgrading is explicit or by `data`."""
    rev = current_revision(engine)
    if rev is None:
        raise WarehouseError(
            "the warehouse has no lifecycle tables yet",
            hint="run `lifecycle data generate --customers 10000` (demo data) or `lifecycle db upgrade`",
            code="L405",
        )
    if rev != head_revision():
        upgrade(engine)


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
