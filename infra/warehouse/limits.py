"""What the warehouse and the pipeline can hold, in one place: imports refuse the rest, runs leave it out.

Timestamps: pandas holds nanosecond datetimes (1677-09-21 to 2262-04-11) and Python's datetime stops at
year 9999, so a row dated 0001-01-01 or 9999-12-31 (both legal in SQLite and PostgreSQL) stopped every
run that read it. Lifecycle works with times in [EARLIEST, LATEST): 1900-01-01 to 2200-01-01, well
inside both, with room for the windows (a year back, a horizon ahead) computed around a date. Dates
given on the command line keep a further ten years from either end (ARG_EARLIEST, ARG_LATEST), so the
windows a run reads around them stay inside too.

Amounts: finite numbers within what `orders.amount` (NUMERIC(12, 2)) holds, below 10^10 in either
direction. Text: within its column's length (from schema.py), without control characters.
Timezones: IANA names zoneinfo knows.

`good_orders` / `good_customers` are the same rules as SQL conditions, so every read of the warehouse
(extract, the incremental state, lookups, KPIs) leaves the same rows out, in the database, vectorised;
`tasks.extract.bad_rows` counts and names what they leave out.
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo

import numpy as np
import pandas as pd
from sqlalchemy import String, and_
from sqlalchemy.sql.expression import ColumnElement

from infra.warehouse import schema

EARLIEST = dt.datetime(1900, 1, 1)
LATEST = dt.datetime(2200, 1, 1)
ARG_EARLIEST = dt.date(1910, 1, 1)
ARG_LATEST = dt.date(2189, 12, 31)
WINDOW_TEXT = f"{EARLIEST.date()} to {LATEST.date()}"

_money = schema.orders.c.amount.type
MAX_AMOUNT = float(10 ** (_money.precision - _money.scale)) - 10.0 ** -_money.scale  # 9,999,999,999.99
INT_MIN, INT_MAX = -(2**31), 2**31 - 1  # INTEGER columns (points, items) on every database
CONTROL = r"[\x00-\x1f\x7f]"  # C0 controls and DEL: NUL, tabs, CR/LF, escapes


def text_length(table: str, column: str) -> int | None:
    """The declared length of a text column (VARCHAR(n)), None when unbounded."""
    kind = schema.metadata.tables[table].c[column].type
    return kind.length if isinstance(kind, String) else None


@functools.lru_cache(maxsize=4096)
def valid_zone(name: object) -> bool:
    """Whether zoneinfo can load this timezone name. It raises more than ZoneInfoNotFoundError for
    bad names: ValueError (absolute or `..` paths, NUL), IsADirectoryError ('America'), OSError
    (a name too long for the file system)."""
    if not isinstance(name, str) or not name:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def zone_mask(zones: pd.Series) -> np.ndarray:
    """True where the timezone name is valid; one zoneinfo lookup per distinct name, not per row."""
    codes, names = pd.factorize(zones.astype(object), use_na_sentinel=True)
    ok = np.array([valid_zone(n) for n in names], dtype=bool)
    return np.where(codes >= 0, ok[np.maximum(codes, 0)] if len(ok) else False, False)


def in_window(values: pd.Series) -> np.ndarray:
    """True where a datetime column (any resolution) is within [EARLIEST, LATEST); NaT is False."""
    return ((values >= pd.Timestamp(EARLIEST)) & (values < pd.Timestamp(LATEST))).to_numpy(dtype=bool, na_value=False)


def date_sql(column) -> ColumnElement:
    """The column's value is a time lifecycle can hold (NULL and, on SQLite, text of other forms are not)."""
    return and_(column >= EARLIEST, column < LATEST)


def amount_sql(column) -> ColumnElement:
    """A finite amount within the bound: infinities, NaN (PostgreSQL NUMERIC holds it) and NULL are not."""
    return and_(column >= -MAX_AMOUNT, column <= MAX_AMOUNT)


def good_orders(table=schema.orders) -> list[ColumnElement]:
    """Orders every step can hold: a time in the window and a finite amount."""
    return [date_sql(table.c.ordered_at), amount_sql(table.c.amount)]


def good_customers(table=schema.customers) -> list[ColumnElement]:
    """Customers every step can hold: a sign-up time in the window (bad birthdays and timezones are
    not reasons to leave a customer out: the birthday is read as unknown, the zone as UTC)."""
    return [date_sql(table.c.signed_up_at)]


def date_arg_problem(name: str, day: dt.date) -> str | None:
    """Why a date given on the command line is unusable, or None."""
    if ARG_EARLIEST <= day <= ARG_LATEST:
        return None
    return (f"{name} {day.isoformat()} is outside the dates lifecycle works with "
            f"({ARG_EARLIEST.isoformat()} to {ARG_LATEST.isoformat()})")
