"""Bulk loading DataFrames: COPY on PostgreSQL, executemany on SQLite, never row-by-row ORM inserts."""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import pandas as pd
from sqlalchemy import Boolean, Integer, String, Table, bindparam, func, literal_column, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement

CHUNK_ROWS = 200_000
ID_CHUNK = 100_000  # ids per lookup (`among` binds them as one parameter): bounds what one query returns


def chunks(items: Sequence[T], size: int = ID_CHUNK) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `size` items, for IN (...) lists and executemany batches."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class among(ColumnElement):
    """`column IN (values)` with the values as one parameter, for lists of thousands of ids.

    SQLAlchemy's `in_()` binds one parameter per value and rewrites the statement for each list
    (0.4 s per 177,000 ids, as much as the lookup itself). Here the list travels whole: as a JSON
    text unpacked by json_each on SQLite, as an array compared with `= ANY` on PostgreSQL, which
    plans it as it plans a literal IN list (`IN (SELECT json_array_elements_text(...))` made it
    semi-join the whole ledger: 20 s per claim). Other databases get `in_()`.
    """

    type = Boolean()
    _is_implicitly_boolean = True  # a comparison already: no "= 1" after it on SQLite, which hides the index
    inherit_cache = False  # the statement holds per-call values: nothing to cache

    def __init__(self, column, values) -> None:
        self.column = column
        self.values = (values.tolist() if isinstance(values, np.ndarray)  # numpy scalars become Python values
                       else [v.item() if isinstance(v, np.generic) else v for v in values])

    @property
    def _from_objects(self) -> list:  # the column's table, so a SELECT without other columns has its FROM
        return self.column._from_objects


@compiles(among)
def _among_default(element: among, compiler, **kw) -> str:
    return compiler.process(element.column.in_(element.values), **kw)


@functools.cache
def _sqlite_has_json() -> bool:
    """JSON1 is built into SQLite since 3.38 (and into most older builds); without it, plain IN lists."""
    import sqlite3

    try:
        sqlite3.connect(":memory:").execute("SELECT value FROM json_each('[1]')").fetchall()
    except sqlite3.OperationalError:
        return False
    return True


@compiles(among, "sqlite")
def _among_sqlite(element: among, compiler, **kw) -> str:
    if not _sqlite_has_json():
        return _among_default(element, compiler, **kw)
    values = bindparam(None, callable_=lambda: json.dumps(element.values, default=str), type_=String, unique=True)
    return f"{compiler.process(element.column, **kw)} IN (SELECT value FROM json_each({compiler.process(values, **kw)}))"


@compiles(among, "postgresql")
def _among_postgresql(element: among, compiler, **kw) -> str:
    from sqlalchemy.dialects.postgresql import ARRAY

    values = bindparam(None, element.values, type_=ARRAY(element.column.type), unique=True)
    return f"{compiler.process(element.column, **kw)} = ANY({compiler.process(values, **kw)})"


TEMP_IDS = 20_000  # from this many ids on, PostgreSQL lookups join a temporary table instead of an array


class IdSet:
    """Many customer ids for several lookups on one connection (allocation's consents, suppressions,
    caps and rivals). On PostgreSQL, from TEMP_IDS ids on, they are copied once into a temporary table
    that every lookup joins: an array of 100,000 ids costs 0.15 s to build and more to parse, for each
    query, and steers the planner to a sequential scan. Elsewhere `among`, a chunk at a time."""

    def __init__(self, ids: Sequence) -> None:
        self.ids = ids
        self._loaded: list[tuple[object, str]] = []  # (transaction, its temporary table)

    @classmethod
    def of(cls, ids: IdSet | Sequence) -> IdSet:
        return ids if isinstance(ids, IdSet) else cls(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def where(self, conn: Connection, column) -> list[ColumnElement]:
        """Conditions `column is one of the ids`, one query each."""
        if conn.dialect.name == "postgresql" and len(self.ids) >= TEMP_IDS and _has_copy(conn):
            table = self._table(conn)
            return [column.in_(select(literal_column("value")).select_from(text(f'"{table}"')))]
        return [among(column, part) for part in chunks(self.ids)]

    def _table(self, conn: Connection) -> str:
        if not conn.in_transaction():
            conn.begin()
        transaction = conn.get_transaction()
        for owner, name in self._loaded:
            if owner is transaction and transaction.is_active:
                return name
        name = f"_ids_{len(self._loaded)}_{id(self) % 10**8}"
        # dropped when the transaction ends: nothing is left behind on a pooled connection
        conn.exec_driver_sql(f'CREATE TEMPORARY TABLE "{name}" (value text) ON COMMIT DROP')
        buf = io.StringIO("".join(f"{_copy_text(v)}\n" for v in np.asarray(self.ids, dtype=object).tolist()))
        with conn.connection.driver_connection.cursor() as cursor:
            cursor.copy_expert(f'COPY "{name}" (value) FROM STDIN', buf)
        conn.exec_driver_sql(f'ANALYZE "{name}"')  # its size, so the planner joins rather than loops
        self._loaded.append((transaction, name))
        return name


def _has_copy(conn: Connection) -> bool:
    return hasattr(conn.connection.driver_connection.cursor(), "copy_expert")


def _copy_text(value) -> str:
    """A value in COPY's text format: backslash, tab and line breaks escaped."""
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


@contextmanager
def connected(source: Engine | Connection) -> Iterator[Connection]:
    """A connection: the one given, or a new one from the engine for the block."""
    if isinstance(source, Connection):
        yield source
    else:
        with source.connect() as conn:
            yield conn


def lookup(source: Engine | Connection, ids: IdSet | Sequence, column, query: Callable[[ColumnElement], object],
           columns: Sequence[str]) -> pd.DataFrame:
    """The rows of `query(condition)` as one frame, where the condition is `column is one of ids`: a query
    per chunk of ids (`among`), or one joining the ids' temporary table (PostgreSQL, `IdSet`)."""
    with connected(source) as conn:
        parts = [fetch_frame(conn, query(within), columns) for within in IdSet.of(ids).where(conn, column)]
    return pd.concat(parts, ignore_index=True) if parts else _empty(columns)


def fetch_frame(conn: Connection, stmt, columns: Sequence[str]) -> pd.DataFrame:
    """The statement's rows as a frame, built from the driver's own tuples: SQLAlchemy's per-row result
    processing costs more than the query when a lookup returns hundreds of thousands of rows. Values
    come as the driver gives them (dates are text on SQLite), so select ids, names and numbers."""
    rows = conn.execute(stmt).cursor.fetchall()
    return pd.DataFrame.from_records(rows, columns=list(columns), nrows=len(rows)) if rows else _empty(columns)


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def utcnow() -> dt.datetime:
    """Now, as the naive UTC timestamp the warehouse stores."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)
T = TypeVar("T")
_SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"  # what SQLAlchemy's SQLite DateTime writes and parses


def bulk_insert(conn: Connection, table: Table, frame: pd.DataFrame) -> int:
    """Append `frame` (columns named as the table's) inside the caller's transaction; returns rows written."""
    if frame.empty:
        return 0
    cols = [c for c in frame.columns if c in table.c]
    frame = frame[cols]
    dialect = conn.dialect.name
    for start in range(0, len(frame), CHUNK_ROWS):
        chunk = frame.iloc[start : start + CHUNK_ROWS]
        if dialect == "postgresql":
            _copy_postgres(conn, table, chunk)
        elif dialect == "sqlite":
            _executemany_sqlite(conn, table, chunk)
        else:
            conn.execute(table.insert(), chunk.to_dict("records"))
    return len(frame)


def insert_ignore(conn: Connection, table: Table, frame: pd.DataFrame, keys: Sequence[str],
                  constants: Mapping[str, object] | None = None) -> None:
    """Insert the rows whose `keys` are not in the table yet; rows already there win (a concurrent writer's
    included: the database's unique constraint decides). `constants` are columns with one value for every
    row (a run's id, playbook, day): bound once, not once per row.

    The rows go into a temporary table first (COPY on PostgreSQL, executemany on SQLite), then
    INSERT ... SELECT ... ON CONFLICT DO NOTHING / INSERT OR IGNORE moves them in, in the database."""
    if frame.empty:
        return
    cols = [c for c in frame.columns if c in table.c]
    frame = frame[cols]
    fixed = {k: v for k, v in (constants or {}).items() if k in table.c and k not in cols}
    names = ", ".join(f'"{c}"' for c in [*cols, *fixed])
    picked = ", ".join([*(f'"{c}"' for c in cols), *(f":{_param(i)}" for i in range(len(fixed)))])
    params = {_param(i): _bindable(v, conn.dialect.name) for i, v in enumerate(fixed.values())}
    conflict = ", ".join(f'"{k}"' for k in keys)
    if conn.dialect.name == "postgresql" and _has_copy(conn):
        temp = _stage(conn, table, frame)
        conn.execute(text(f'INSERT INTO "{table.name}" ({names}) SELECT {picked} FROM "{temp}" '
                          f"ON CONFLICT ({conflict}) DO NOTHING"), params)
        conn.exec_driver_sql(f'DELETE FROM "{temp}"')
    elif conn.dialect.name == "sqlite":
        temp = _stage(conn, table, frame)
        conn.execute(text(f'INSERT OR IGNORE INTO "{table.name}" ({names}) SELECT {picked} FROM "{temp}"'), params)
        conn.exec_driver_sql(f'DELETE FROM "{temp}"')
    else:  # pragma: no cover - other backends: the generic statement, still guarded by the key
        from sqlalchemy.dialects import postgresql

        stmt = postgresql.insert(table).on_conflict_do_nothing(index_elements=list(keys))
        conn.execute(stmt, frame.assign(**fixed).astype(object).where(frame.notna(), None).to_dict("records"))


def update_rows(conn: Connection, table: Table, frame: pd.DataFrame, keys: Sequence[str], *,
                keep: Sequence[str] = ()) -> None:
    """Overwrite, in the rows whose `keys` the frame has, every other column the frame has; in `keep`
    columns a NULL in the frame keeps the table's value. Rows the table lacks are not added (insert those
    with bulk_insert: an upsert checks NOT NULL before it finds the conflict, so it cannot leave a column
    out). Inside the caller's transaction: on PostgreSQL the rows are staged in a temporary table (COPY)
    and updated in one UPDATE ... FROM; on SQLite, an executemany UPDATE by key."""
    cols = [c for c in frame.columns if c in table.c]
    sets = [c for c in cols if c not in keys]
    if frame.empty or not sets:
        return
    frame = frame[cols]
    if conn.dialect.name == "postgresql" and _has_copy(conn):
        temp = _stage(conn, table, frame)
        assigned = ", ".join(f'"{c}" = COALESCE(s."{c}", t."{c}")' if c in keep else f'"{c}" = s."{c}"' for c in sets)
        matched = " AND ".join(f't."{k}" = s."{k}"' for k in keys)
        conn.exec_driver_sql(f'UPDATE "{table.name}" AS t SET {assigned} FROM "{temp}" AS s WHERE {matched}')
        conn.exec_driver_sql(f'DELETE FROM "{temp}"')
        return
    stmt = table.update().where(*(table.c[k] == bindparam(f"key_{k}") for k in keys)).values(
        {c: (func.coalesce(bindparam(f"new_{c}", type_=table.c[c].type), table.c[c]) if c in keep
             else bindparam(f"new_{c}", type_=table.c[c].type)) for c in sets})
    values = {c: _python_values(frame[c]) for c in cols}
    rows = [{**{f"key_{k}": values[k][i] for k in keys}, **{f"new_{c}": values[c][i] for c in sets}}
            for i in range(len(frame))]
    for part in chunks(rows, CHUNK_ROWS):
        conn.execute(stmt, list(part))


def _python_values(series: pd.Series) -> list:
    """A column as Python values SQLAlchemy binds: None for missing, datetimes and dates as themselves."""
    if pd.api.types.is_datetime64_any_dtype(series):
        return [None if pd.isna(v) else v.to_pydatetime() for v in series]
    return [None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT
            else (v.item() if isinstance(v, np.generic) else v) for v in series.astype(object)]


def _stage(conn: Connection, table: Table, frame: pd.DataFrame) -> str:
    """The frame's rows in a temporary table shaped like `table`'s columns of the frame; its name. One
    table per column set: a pooled connection keeps it between calls (emptied at commit on PostgreSQL,
    by the caller's DELETE elsewhere)."""
    cols = list(frame.columns)
    temp = f"_new_{table.name}_{hashlib.sha1('|'.join(cols).encode()).hexdigest()[:8]}"
    source = ", ".join(f'"{c}"' for c in cols)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f'CREATE TEMPORARY TABLE IF NOT EXISTS "{temp}" ON COMMIT DELETE ROWS AS '
                             f'SELECT {source} FROM "{table.name}" WITH NO DATA')
        for start in range(0, len(frame), CHUNK_ROWS):
            _copy_postgres(conn, table, frame.iloc[start : start + CHUNK_ROWS], into=temp)
    else:
        conn.exec_driver_sql(f'CREATE TEMPORARY TABLE IF NOT EXISTS "{temp}" AS SELECT {source} FROM "{table.name}" WHERE 0')
        for start in range(0, len(frame), CHUNK_ROWS):
            _executemany_sqlite(conn, temp, frame.iloc[start : start + CHUNK_ROWS])
    return temp


def insert_select_ignore(conn: Connection, table: Table, columns: Sequence, rows, keys: Sequence[str]) -> int:
    """INSERT INTO table (columns) SELECT ... ON CONFLICT (keys) DO NOTHING, in the database: rows already
    there win (as in insert_ignore) and nothing travels through Python. Returns the rows inserted."""
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    stmt = insert(table).from_select(columns, rows).on_conflict_do_nothing(index_elements=list(keys))
    return int(conn.execute(stmt).rowcount or 0)


def _param(i: int) -> str:
    return f"constant_{i}"


def _bindable(value, dialect: str):
    """A constant as its column would get it: dates and times as SQLite's text, numpy scalars as Python's."""
    if dialect == "sqlite":
        return _as_sql_text(value)
    return value.item() if isinstance(value, np.generic) else value


def bulk_load(conn: Connection, table: Table, frame: pd.DataFrame) -> int:
    """bulk_insert with the table's indexes dropped and rebuilt: for loading a large frame at once.

    Indexing once after the load is about 3x faster than keeping indexes current row by row
    (SQLite, 2.7M events: 21 s vs 6 s). Run it inside a transaction: readers never see the table
    unindexed, and a failure restores the indexes with everything else.
    """
    with without_indexes(conn, [table]):
        return bulk_insert(conn, table, frame)


@contextmanager
def without_indexes(conn: Connection, tables: Sequence[Table]) -> Iterator[None]:
    """Drop the tables' indexes for a load of many chunks and build them once at the end.

    Inside the caller's transaction: on an error the transaction's rollback restores them.
    """
    raw = conn.connection.driver_connection
    if conn.dialect.name == "sqlite" and not raw.in_transaction:
        # pysqlite opens its transaction at the first INSERT, not before DDL: without this BEGIN the
        # DROP INDEX would commit at once and a failed load would leave the tables unindexed
        conn.exec_driver_sql("BEGIN")
    for table in tables:
        for index in table.indexes:
            index.drop(conn, checkfirst=True)
    yield
    for table in tables:
        for index in table.indexes:
            index.create(conn)


def _as_sql_text(value):
    """Python dates and datetimes as the text SQLAlchemy itself writes on SQLite (so comparisons sort)."""
    if isinstance(value, dt.datetime):
        return value.strftime(_SQLITE_DATETIME)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value.item() if isinstance(value, np.generic) else value


def _sqlite_values(series: pd.Series) -> list:
    """A column as the Python values sqlite3 binds: None for missing, text for dates and times."""
    if pd.api.types.is_datetime64_any_dtype(series):
        if isinstance(series.dtype, pd.DatetimeTZDtype):
            text = series.dt.strftime(_SQLITE_DATETIME)
            return text.where(series.notna(), None).tolist()
        stamps = series.to_numpy().astype("datetime64[us]")
        text = np.char.replace(np.datetime_as_string(stamps, unit="us"), "T", " ").astype(object)
        text[np.isnat(stamps)] = None
        return text.tolist()
    if series.dtype == object:
        if pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty"):
            return series.where(series.notna(), None).tolist()
        return [None if v is None or (isinstance(v, float) and np.isnan(v)) else _as_sql_text(v)
                for v in series.tolist()]
    return series.to_numpy(dtype=object, na_value=None).tolist()


def _executemany_sqlite(conn: Connection, table: Table | str, chunk: pd.DataFrame, verb: str = "INSERT") -> None:
    columns = list(chunk.columns)
    rows = list(zip(*(_sqlite_values(chunk[c]) for c in columns)))
    name = table if isinstance(table, str) else table.name
    sql = f'{verb} INTO "{name}" ({", ".join(columns)}) VALUES ({", ".join("?" * len(columns))})'
    conn.exec_driver_sql(sql, rows)


def _copy_postgres(conn: Connection, table: Table, chunk: pd.DataFrame, into: str | None = None) -> None:
    raw = conn.connection.driver_connection
    if not hasattr(raw, "cursor") or not hasattr(raw.cursor(), "copy_expert"):  # psycopg2 only
        conn.execute(table.insert(), chunk.astype(object).where(chunk.notna(), None).to_dict("records"))
        return
    buf = io.StringIO()
    out = chunk.copy()
    for c in out.columns:
        if pd.api.types.is_datetime64_any_dtype(out[c]):
            out[c] = out[c].dt.strftime("%Y-%m-%d %H:%M:%S.%f")
        elif isinstance(table.c[c].type, Integer) and not pd.api.types.is_integer_dtype(out[c]):
            # integers with gaps arrive as floats ("1.0"), which COPY refuses for integer columns
            out[c] = pd.to_numeric(out[c]).astype("Int64")
    out.to_csv(buf, index=False, header=False, na_rep="\\N", quoting=csv.QUOTE_MINIMAL)
    buf.seek(0)
    cols = ", ".join(f'"{c}"' for c in out.columns)
    with raw.cursor() as cursor:
        cursor.copy_expert(f'COPY "{into or table.name}" ({cols}) FROM STDIN WITH (FORMAT csv, NULL \'\\N\')', buf)
