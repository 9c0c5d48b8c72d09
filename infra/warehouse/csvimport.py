"""Bring your own data: validate an orders / customers / events CSV completely, then load it in one go.

Every row is checked before anything is written; problems come back as `FILE:LINE: column X: ...`
(the header is line 1), up to MAX_PROBLEMS of them plus a count of the rest, and nothing is
imported. Datetimes are ISO 8601 dates or datetimes; an offset (`+08:00`, `Z`) is converted to UTC,
a datetime without one is taken as UTC. Amounts are plain numbers (no currency symbols or thousands
separators); negative amounts (refunds) are refused: net them into their order or leave them out.
Extra columns are ignored; `--map src=dst` renames a column first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import Engine

from infra.errors import UsageError
from infra.warehouse import schema
from infra.warehouse.bulk import among, bulk_insert

Kind = Literal["orders", "customers", "events"]
MAX_PROBLEMS = 20
TIERS = ("bronze", "silver", "gold", "diamond")


@dataclass(frozen=True)
class Format:
    required: tuple[str, ...]
    optional: tuple[str, ...]
    datetimes: tuple[str, ...] = ()
    dates: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()
    integers: tuple[str, ...] = ()


FORMATS: dict[str, Format] = {
    "orders": Format(("customer_id", "ordered_at", "amount"), ("order_id", "channel", "category", "items"),
                     datetimes=("ordered_at",), numbers=("amount",), integers=("items",)),
    "customers": Format(("customer_id",), ("signed_up_at", "timezone", "member_tier", "points", "birthday",
                                           "first_name", "email", "phone", "advisor_id"),
                        datetimes=("signed_up_at",), dates=("birthday",), integers=("points",)),
    "events": Format(("customer_id", "occurred_at", "type"), ("channel",), datetimes=("occurred_at",)),
}


class Problems:
    """Collects `FILE:LINE: column X: ...` lines; raises them all at once."""

    def __init__(self, path: Path) -> None:
        self.path, self.lines, self.total = path, [], 0

    def add(self, rows: np.ndarray, column: str, message) -> None:
        """`rows` are 0-based data rows; `message` a string or a function of the row's raw value."""
        for row in rows[: max(MAX_PROBLEMS - len(self.lines), 0)]:
            text = message(row) if callable(message) else message
            self.lines.append((int(row) + 2, f"{self.path.name}:{int(row) + 2}: column {column}: {text}"))
        self.total += len(rows)

    def raise_if_any(self, kind: str) -> None:
        if not self.total:
            return
        shown = [text for _, text in sorted(self.lines)][:MAX_PROBLEMS]
        more = self.total - len(shown)
        body = "\n".join(shown) + (f"\n... and {more} more problem{'s' if more != 1 else ''}" if more > 0 else "")
        raise UsageError(f"{self.path}: {self.total} problem{'s' if self.total != 1 else ''} in the {kind} file; "
                         f"nothing was imported\n{body}",
                         hint=_format_hint(kind), code="L320")


def _format_hint(kind: str) -> str:
    f = FORMATS[kind]
    return (f"{kind} files need the columns {', '.join(f.required)} (optional: {', '.join(f.optional)}); "
            "dates as ISO 8601 (2026-03-31 or 2026-03-31T14:05:00+08:00), plain numbers; rename columns "
            "with --map SOURCE=TARGET")


def read(kind: Kind, path: Path | str, mapping: dict[str, str] | None = None) -> pd.DataFrame:
    """The validated rows of a CSV file as typed columns (datetimes naive UTC); UsageError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such file: {path}", hint="give the path of a CSV file", code="L321")
    fmt = FORMATS[kind]
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    raw.columns = [c.strip() for c in raw.columns]
    raw = raw.rename(columns=mapping or {})
    problems = Problems(path)
    lacking = [c for c in fmt.required if c not in raw.columns]
    if lacking:
        raise UsageError(f"{path}:1: missing column{'s' if len(lacking) > 1 else ''} {', '.join(lacking)} "
                         f"(the header has: {', '.join(raw.columns)}); nothing was imported",
                         hint=_format_hint(kind), code="L320")
    out = pd.DataFrame(index=raw.index)
    for col in [c for c in (*fmt.required, *fmt.optional) if c in raw.columns]:
        text = raw[col].str.strip()
        blank = (text == "").to_numpy()
        if col in fmt.required and blank.any():
            problems.add(np.flatnonzero(blank), col, "empty (required)")
        if col in fmt.datetimes or col in fmt.dates:
            parsed = pd.to_datetime(text.where(~blank), format="ISO8601", errors="coerce", utc=True)
            bad = np.flatnonzero(parsed.isna().to_numpy() & ~blank)
            problems.add(bad, col, lambda r, t=text: f"not an ISO 8601 date or datetime: {t.iloc[r]!r}")
            parsed = parsed.dt.tz_convert(None)
            out[col] = parsed.dt.date if col in fmt.dates else parsed
        elif col in fmt.numbers or col in fmt.integers:
            number = pd.to_numeric(text.where(~blank), errors="coerce")
            bad = number.isna().to_numpy() & ~blank
            if col in fmt.integers:
                bad |= (number.notna() & (number != number.round())).to_numpy()
            problems.add(np.flatnonzero(bad), col, lambda r, t=text: (
                f"not a {'whole ' if col in fmt.integers else ''}number: {t.iloc[r]!r}"
                " (plain digits with a '.' for decimals; no currency symbols or thousands separators)"))
            negative = np.flatnonzero((number < 0).to_numpy())
            problems.add(negative, col, lambda r, t=text: (
                f"negative ({t.iloc[r]}): refunds are not orders; net them into the original order or leave them out"))
            out[col] = number.round().astype("Int64") if col in fmt.integers else number
        else:
            too_long = np.flatnonzero((text.str.len() > 64).to_numpy()) if col.endswith("_id") else np.array([], int)
            problems.add(too_long, col, "longer than 64 characters")
            out[col] = text.where(~blank, None)
    if kind == "customers" and "member_tier" in out:
        tier = out["member_tier"].str.lower()
        bad = np.flatnonzero((tier.notna() & ~tier.isin(TIERS)).to_numpy())
        problems.add(bad, "member_tier", lambda r: f"{out['member_tier'].iloc[r]!r} is not one of {', '.join(TIERS)}")
        out["member_tier"] = tier
    key = {"orders": "order_id", "customers": "customer_id"}.get(kind)
    if key and key in out:
        dup = out[key].notna() & out[key].duplicated(keep=False)
        first_line = out[key][dup].groupby(out[key][dup]).transform(lambda s: s.index.min() + 2)
        later = np.flatnonzero((dup & out[key].duplicated(keep="first")).to_numpy())
        problems.add(later, key, lambda r: f"{out[key].iloc[r]!r} repeats line {int(first_line.loc[r])}")
    problems.raise_if_any(kind)
    if kind == "orders":
        out = _with_order_ids(out)
    out["_line"] = out.index + 2
    return out.reset_index(drop=True)


def _with_order_ids(orders: pd.DataFrame) -> pd.DataFrame:
    """Rows without an order_id get a stable one from (customer_id, ordered_at, amount, line)."""
    if "order_id" not in orders:
        orders["order_id"] = None
    missing = orders["order_id"].isna()
    if missing.any():
        basis = (orders["customer_id"] + "|" + orders["ordered_at"].astype(str) + "|"
                 + orders["amount"].astype(str) + "|" + (orders.index + 2).astype(str))[missing]
        orders.loc[missing, "order_id"] = ["csv-" + hashlib.sha256(b.encode()).hexdigest()[:20] for b in basis]
    return orders


def import_file(engine: Engine, kind: Kind, path: Path | str, mapping: dict[str, str] | None = None) -> int:
    """Validate, refuse ids the warehouse already has, then write every row in one transaction."""
    frame = read(kind, path, mapping)
    path = Path(path)
    table = schema.metadata.tables[kind]
    if kind == "customers":
        frame["signed_up_at"] = frame["signed_up_at"] if "signed_up_at" in frame else pd.NaT
        frame["timezone"] = (frame["timezone"] if "timezone" in frame else pd.Series(None, index=frame.index, dtype=object)).fillna("UTC")
        missing = np.flatnonzero(frame["signed_up_at"].isna().to_numpy())
        if len(missing):
            problems = Problems(path)
            problems.add(missing, "signed_up_at", "empty (the warehouse needs a sign-up time for every customer)")
            problems.raise_if_any(kind)
    key = {"orders": "order_id", "customers": "customer_id"}.get(kind)
    with engine.begin() as conn:
        if key:
            ids = frame[key].tolist()
            taken: set = set()
            for start in range(0, len(ids), 1000):
                chunk = ids[start:start + 1000]
                taken |= set(conn.execute(select(table.c[key]).where(among(table.c[key], chunk))).scalars())
            if taken:
                problems = Problems(path)
                rows = np.flatnonzero(frame[key].isin(taken).to_numpy())
                problems.add(rows, key, lambda r: f"{frame[key].iloc[r]!r} is already in the warehouse")
                problems.raise_if_any(kind)
        return bulk_insert(conn, table, frame.drop(columns=["_line"]))


def parse_mapping(pairs: list[str] | None) -> dict[str, str]:
    """`--map src=dst` pairs as a rename mapping."""
    mapping = {}
    for pair in pairs or []:
        src, sep, dst = pair.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise UsageError(f"--map needs SOURCE=TARGET, got {pair!r}", hint="e.g. --map order_date=ordered_at",
                             code="L322")
        mapping[src.strip()] = dst.strip()
    return mapping
