"""Bulk loading DataFrames: COPY on PostgreSQL, executemany on SQLite, never row-by-row ORM inserts."""

from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd
from sqlalchemy import Table
from sqlalchemy.engine import Connection

CHUNK_ROWS = 200_000
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


def _sqlite_values(series: pd.Series) -> list:
    if pd.api.types.is_datetime64_any_dtype(series):
        text = series.dt.strftime(_SQLITE_DATETIME)
        return text.where(series.notna(), None).tolist()
    if series.dtype == object:
        # dates (datetime.date) go in as ISO text, which is how SQLAlchemy stores Date on SQLite
        return [None if v is None or (isinstance(v, float) and np.isnan(v)) else
                (v.isoformat() if hasattr(v, "isoformat") else v) for v in series.tolist()]
    values = series.astype(object).where(series.notna(), None)
    return [v.item() if isinstance(v, np.generic) else v for v in values.tolist()]


def _executemany_sqlite(conn: Connection, table: Table, chunk: pd.DataFrame) -> None:
    columns = list(chunk.columns)
    rows = list(zip(*(_sqlite_values(chunk[c]) for c in columns)))
    sql = f'INSERT INTO "{table.name}" ({", ".join(columns)}) VALUES ({", ".join("?" * len(columns))})'
    conn.exec_driver_sql(sql, rows)


def _copy_postgres(conn: Connection, table: Table, chunk: pd.DataFrame) -> None:
    buf = io.StringIO()
    out = chunk.copy()
    for c in out.columns:
        if pd.api.types.is_datetime64_any_dtype(out[c]):
            out[c] = out[c].dt.strftime("%Y-%m-%d %H:%M:%S.%f")
    out.to_csv(buf, index=False, header=False, na_rep="\\N", quoting=csv.QUOTE_MINIMAL)
    buf.seek(0)
    cols = ", ".join(f'"{c}"' for c in out.columns)
    raw = conn.connection.driver_connection
    with raw.cursor() as cursor:
        cursor.copy_expert(f'COPY "{table.name}" ({cols}) FROM STDIN WITH (FORMAT csv, NULL \'\\N\')', buf)
