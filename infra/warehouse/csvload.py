"""`lifecycle data import`: a checked CSV file (csvimport.parse) into the warehouse, in one transaction.

What an import does with what the warehouse already has, per kind:

- customers are upserted. A customer already there gets the file's value in every column the file
  has, an empty cell included (it clears the value; an empty timezone is the default timezone, an
  empty signed_up_at keeps the warehouse's); columns the file lacks keep their values. A customer new
  to the warehouse needs a sign-up time.
- orders, events, consents and suppressions are history: appended, never overwritten.
  - orders: an order_id already there with the same values (in the file's columns) is skipped, so a
    re-import or an overlapping export adds only the new orders; one with other values is refused.
  - events have no key: every row is appended (import each period once).
  - consents: a withdrawal is never lost. A consent already there (customer, channel, purpose,
    granted_at) is skipped; a row that withdraws it records the withdrawal; a row that grants again
    what the warehouse has as withdrawn keeps the withdrawal (a new grant is a row with its own, later
    granted_at). A withdrawal ends every open grant of that consent made at or before it.
  - suppressions: a (customer, channel, reason) already there is skipped; an import never lifts one.
- Rows of customers the warehouse does not have are refused (L347), or with `create_customers` their
  customers are added, signed up at their first row.

Customers without a timezone get the default (`--default-timezone`, else lifecycle.yaml's
`defaults.timezone`, else UTC) and the import says how many did, with the offset the file's
datetimes carry as a hint when nothing was set. Problems found against the warehouse are reported
like the file's own (FILE:LINE, counted by kind, all of them in the --errors file) and roll back.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection, Engine

from infra.errors import UsageError
from infra.warehouse import schema
from infra.warehouse.bulk import among, bulk_insert, chunks, update_rows, utcnow
from infra.warehouse.csvimport import CONSENT_PURPOSES, FORMATS, Kind, Parsed, parse
from infra.warehouse.csvproblems import write_errors

# when a customer created for a history row signed up: their first row's time
TIME_OF = {"orders": "ordered_at", "events": "occurred_at", "consents": "granted_at", "suppressions": "created_at"}
# the zone an offset most likely means, tried in this order before any other zone with that offset
USUAL_ZONES = ("Asia/Shanghai", "Asia/Tokyo", "Asia/Seoul", "Asia/Singapore", "Asia/Kolkata", "Asia/Dubai",
               "Europe/London", "Europe/Berlin", "Europe/Moscow", "America/New_York", "America/Chicago",
               "America/Denver", "America/Los_Angeles", "America/Sao_Paulo", "Australia/Sydney", "Pacific/Auckland")


@dataclass(frozen=True)
class DefaultZone:
    """The timezone for customers without one, and where it was set (`--default-timezone`,
    `defaults.timezone`; None: nowhere, so UTC)."""

    name: str = "UTC"
    source: str | None = None

    @classmethod
    def of(cls, zone: DefaultZone | str | None) -> DefaultZone:
        return zone if isinstance(zone, DefaultZone) else cls(zone, FLAG) if zone else cls()

    @property
    def overrides(self) -> bool:
        """Given on the command line for this file: it also sets the zone of customers already in the warehouse
        when the file has no timezone column (how customers imported as UTC are corrected)."""
        return self.source == FLAG


FLAG = "--default-timezone"


@dataclass(frozen=True)
class Imported:
    """What an import wrote: rows written (for customers: new and updated), customers it created for
    history rows (--create-customers), customers it updated, rows it skipped as already there, and what
    the user should know (a default timezone filled in, a withdrawal kept)."""

    rows: int
    created_customers: int = 0
    updated: int = 0
    skipped: int = 0
    warnings: tuple[str, ...] = ()


def import_file(engine: Engine, kind: Kind, path: Path | str, mapping: dict[str, str] | None = None, *,
                type_map: dict[str, str] | None = None, create_customers: bool = False) -> int:
    """Validate, refuse what the warehouse already has or lacks, then write every row in one transaction;
    the number of rows written."""
    return load(engine, kind, path, mapping, type_map=type_map, create_customers=create_customers).rows


def load(engine: Engine, kind: Kind, path: Path | str, mapping: dict[str, str] | None = None, *,
         type_map: dict[str, str] | None = None, create_customers: bool = False,
         default_timezone: DefaultZone | str | None = None, purposes: tuple[str, ...] = CONSENT_PURPOSES,
         errors: Path | str | None = None) -> Imported:
    """`import_file`, saying what it did. `errors`: write every problem there (line, column, value,
    problem), a header alone when there were none."""
    report = Path(errors) if errors else None
    zone = DefaultZone.of(default_timezone)
    try:
        if create_customers and kind not in TIME_OF:
            raise UsageError("--create-customers goes with orders, events, consents or suppressions files",
                             hint="a customers file creates its own customers", code="L348")
        parsed = parse(kind, path, mapping, type_map, purposes=purposes, report=report)
        with engine.begin() as conn:
            done = _LOADERS[kind](conn, parsed, zone, create_customers, report)
    except UsageError as exc:
        if report is not None and not getattr(exc, "reported", False):
            write_errors(report, [_as_record(exc, Path(path))])
        raise
    if report is not None:
        write_errors(report, [])
    return done


def _as_record(exc: UsageError, path: Path) -> tuple[str, str, str, str]:
    """A problem with the whole file (empty, not UTF-8, a column missing) as the --errors file's row."""
    text = exc.message.split("\n", 1)[0].replace("; nothing was imported", "")
    if text.startswith(f"{path}:"):
        text = text[len(f"{path}:"):]
    at = re.match(r"(\d+): (.*)", text)
    return (at.group(1), "", "", at.group(2)) if at else ("", "", "", text.lstrip(": "))


# ---- customers: upserted -----------------------------------------------------------------------

def _customers(conn: Connection, p: Parsed, zone: DefaultZone, create: bool, report: Path | None) -> Imported:
    frame = p.frame.drop(columns="_line")
    known = _known(conn, frame["customer_id"])
    new = ~known
    problems = p.problems(report)
    if "signed_up_at" not in frame:
        n = int(new.sum())
        problems.add_group(np.flatnonzero(new), "signed_up_at", (
            f"the file has no signed_up_at column, and {n:,} of its customers {'are' if n != 1 else 'is'} not in "
            "the warehouse yet (the first on this line): a new customer needs a sign-up time"),
            kind="missing: customers new to the warehouse need it", once=True)
    else:
        problems.add(np.flatnonzero(new & frame["signed_up_at"].isna().to_numpy()), "signed_up_at",
                     "empty: a customer new to the warehouse needs a sign-up time", kind="empty for a new customer")
    problems.raise_if_any(hint="give customers the warehouse does not have yet a signed_up_at (ISO 8601); customers "
                               "it has keep theirs when the column is missing or empty")
    notes = list(p.notes)
    keep = ["signed_up_at"]  # an empty sign-up time keeps the warehouse's: it cannot be cleared
    if "timezone" in frame:
        fill = frame["timezone"].isna().to_numpy()
    else:  # new customers get the default; those already there keep theirs, unless --default-timezone says
        frame["timezone"] = None
        fill = new | known if zone.overrides else new
        if not zone.overrides:
            keep.append("timezone")
    frame.loc[fill, "timezone"] = zone.name
    if fill.any():
        notes.append(zone_note(int(fill.sum()), zone, p))
    cleared = {c: int((known & frame[c].isna().to_numpy()).sum()) for c in frame.columns
               if c not in ("customer_id", "signed_up_at", "timezone")}
    cleared = {c: n for c, n in cleared.items() if n}
    if cleared:
        notes.append("empty cells cleared " + ", ".join(f"{c} for {n:,} customer{'s' if n != 1 else ''}"
                                                         for c, n in cleared.items())
                     + " already in the warehouse (an empty cell clears a value; leave the column out to keep it)")
    bulk_insert(conn, schema.customers, frame[new])
    update_rows(conn, schema.customers, frame[known], ["customer_id"], keep=keep)
    return Imported(len(frame), updated=int(known.sum()), warnings=tuple(notes))


def _known(conn: Connection, ids: pd.Series) -> np.ndarray:
    """Which of these customer ids the warehouse has."""
    c = schema.customers.c.customer_id
    have: set = set()
    for part in chunks(list(pd.unique(ids.to_numpy(dtype=object)))):
        have |= set(conn.execute(select(c).where(among(c, part))).scalars())
    return ids.isin(have).to_numpy()


def zone_note(n: int, zone: DefaultZone, p: Parsed | None = None) -> str:
    """What happened to customers without a timezone, with the file's offsets as a hint when they
    disagree with the zone they got."""
    who = f"{n:,} customer{'s' if n != 1 else ''} without a timezone"
    hint = _offset_hint(p, zone) if p is not None else None
    if zone.source:
        return f"{who}: stored as {zone.name} ({zone.source})" + (f"; {hint}" if hint else "")
    return (f"{who}: stored as UTC, so quiet hours and send times are judged in UTC for them; "
            + (hint or "if they live elsewhere, import the file again with --default-timezone ZONE (an import "
                       "updates customers), and set defaults.timezone in lifecycle.yaml for the next ones"))


def _offset_hint(p: Parsed, zone: DefaultZone) -> str | None:
    """`the signed_up_at values carry +08:00: import the file again with --default-timezone Asia/Shanghai ...`,
    when a datetime column's usual offset is not the default zone's."""
    usual = _usual(p)
    if usual is None:
        return None
    offset, at = usual
    if _offset_text(at.astimezone(zoneinfo.ZoneInfo(zone.name)).utcoffset()) == offset:
        return None
    col = next(c for c, o in p.offsets.items() if o == offset)
    return (f"the {col} values carry {offset}: import the file again with --default-timezone "
            f"{zone_for_offset(offset, at) or 'ZONE'} (an import updates customers), and set defaults.timezone in "
            "lifecycle.yaml for the next ones")


def _usual(p: Parsed) -> tuple[str, dt.datetime] | None:
    """The first non-zero usual offset among the file's datetime columns, and a time it was seen at."""
    for col, offset in p.offsets.items():
        values = p.frame[col].dropna()
        if len(values) and offset != "+00:00":
            return offset, pd.Timestamp(values.iloc[0]).to_pydatetime().replace(tzinfo=dt.UTC)
    return None


def zone_for_offset(offset: str, at: dt.datetime) -> str | None:
    """A timezone whose offset at `at` is `offset` (+08:00 -> Asia/Shanghai): a usual one first."""
    others = sorted(z for z in zoneinfo.available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/")))
    for name in (*USUAL_ZONES, *others):
        try:
            if _offset_text(at.astimezone(zoneinfo.ZoneInfo(name)).utcoffset()) == offset:
                return name
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            continue
    return None


def _offset_text(delta: dt.timedelta | None) -> str:
    minutes = int((delta or dt.timedelta()).total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


# ---- history: appended ------------------------------------------------------------------------

def _orders(conn: Connection, p: Parsed, zone: DefaultZone, create: bool, report: Path | None) -> Imported:
    frame = p.frame
    fmt = FORMATS["orders"]
    cols = [c for c in (*fmt.required, *fmt.optional) if c in frame]
    table = schema.orders
    there = pd.DataFrame(columns=cols)
    for part in chunks(frame["order_id"].tolist()):
        rows = conn.execute(select(*(table.c[c] for c in cols)).where(among(table.c.order_id, part))).all()
        there = pd.concat([there, pd.DataFrame(rows, columns=cols)], ignore_index=True) if rows else there
    there = there.set_index("order_id")
    repeat = frame["order_id"].isin(there.index).to_numpy()
    differs = _differences(frame[repeat], there, [c for c in cols if c != "order_id"])
    problems = p.problems(report)
    rows = np.flatnonzero(repeat)[differs.to_numpy() != ""]
    problems.add(rows, "order_id", lambda r: (f"{frame['order_id'].iloc[r]!r} is already in the warehouse with another "
                                              f"{differs.loc[frame.index[r]]}: orders are history, never overwritten"),
                 kind="already in the warehouse with other values")
    problems.raise_if_any(hint="correct the order in the warehouse, or leave the row out; rows the warehouse has "
                               "with the same values are skipped")
    fresh = frame[~repeat]
    created, notes = _customers_for(conn, p, fresh, zone, create, report)
    return Imported(bulk_insert(conn, table, fresh.drop(columns=["_line"])), created, skipped=int(repeat.sum()),
                    warnings=notes)


def _differences(rows: pd.DataFrame, there: pd.DataFrame, cols: list[str]) -> pd.Series:
    """Per file row whose order_id the warehouse has: the columns whose values differ ('' when none)."""
    if rows.empty:
        return pd.Series("", index=rows.index, dtype=object)
    old = there.loc[rows["order_id"].to_numpy()].set_axis(rows.index)
    out = pd.Series("", index=rows.index, dtype=object)
    for c in cols:
        a, b = rows[c], old[c]
        if c == "ordered_at":
            same = pd.to_datetime(a).dt.floor("us").to_numpy() == pd.to_datetime(b).dt.floor("us").to_numpy()
        elif c in ("amount", "items"):
            x, y = pd.to_numeric(a, errors="coerce").to_numpy(float), pd.to_numeric(b, errors="coerce").to_numpy(float)
            same = (np.isnan(x) & np.isnan(y)) | (np.abs(x - y) < 0.005)
        else:
            same = (a.isna().to_numpy() & b.isna().to_numpy()) | (a.astype(object).to_numpy() == b.astype(object).to_numpy())
        out = out.where(same, out + np.where(out == "", "", ", ") + c)
    return out


def _events(conn: Connection, p: Parsed, zone: DefaultZone, create: bool, report: Path | None) -> Imported:
    created, notes = _customers_for(conn, p, p.frame, zone, create, report)
    return Imported(bulk_insert(conn, schema.events, p.frame.drop(columns=["_line"])), created, warnings=notes)


def _consents(conn: Connection, p: Parsed, zone: DefaultZone, create: bool, report: Path | None) -> Imported:
    """Grants and withdrawals, merged so that no withdrawal is ever lost (see the module's docstring)."""
    frame = p.frame
    key = ["customer_id", "channel", "purpose", "granted_at"]
    created, notes = _customers_for(conn, p, frame, zone, create, report)
    notes = list(notes)
    t = schema.consents.c
    old = []
    for part in chunks(list(pd.unique(frame["customer_id"].to_numpy(dtype=object)))):
        old += conn.execute(select(t.consent_id, t.customer_id, t.channel, t.purpose, t.granted_at, t.withdrawn_at)
                            .where(among(t.customer_id, part))).all()
    old = pd.DataFrame(old, columns=["consent_id", *key, "withdrawn_at"])
    for c in ("granted_at", "withdrawn_at"):
        old[c] = pd.to_datetime(old[c]).astype("datetime64[us]")
    mine = frame.assign(granted_at=frame["granted_at"].astype("datetime64[us]"),
                        withdrawn_at=(frame["withdrawn_at"] if "withdrawn_at" in frame else pd.NaT))
    mine["withdrawn_at"] = pd.to_datetime(mine["withdrawn_at"]).astype("datetime64[us]")
    # per consent already there: its withdrawal, if any row of it has one
    recorded = old.groupby(key, dropna=False)["withdrawn_at"].min().rename("recorded").reset_index()
    merged = mine.merge(recorded, on=key, how="left", indicator=True)
    there = (merged["_merge"] == "both").to_numpy()
    recorded_w = merged["recorded"].notna().to_numpy()
    regrant = there & recorded_w & merged["withdrawn_at"].isna().to_numpy()
    moved = there & recorded_w & merged["withdrawn_at"].notna().to_numpy() & \
        (merged["withdrawn_at"] != merged["recorded"]).to_numpy()
    if regrant.any():
        n = int(regrant.sum())
        notes.append(f"{n:,} row{'s' if n != 1 else ''} grant{'' if n != 1 else 's'} a consent the warehouse has as "
                     "withdrawn (the same granted_at): the withdrawal is kept; a new grant is a row with its own, "
                     "later granted_at")
    if moved.any():
        n = int(moved.sum())
        notes.append(f"{n:,} row{'s' if n != 1 else ''} withdraw{'' if n != 1 else 's'} at another time a consent "
                     "the warehouse has as withdrawn: the recorded withdrawal is kept")
    fresh = mine[~there]
    written = bulk_insert(conn, schema.consents, fresh[[*key, "withdrawn_at"]])
    closed = _withdraw(conn, mine, old)
    if closed:
        notes.append(f"withdrawals in the file ended {closed:,} grant{'s' if closed != 1 else ''} the warehouse had open")
    return Imported(written, created, skipped=int(there.sum()), warnings=tuple(notes))


def _withdraw(conn: Connection, mine: pd.DataFrame, old: pd.DataFrame) -> int:
    """Every withdrawal in the file ends the open grants of its consent made at or before it, earliest
    withdrawal first; a withdrawal already recorded is never changed. How many grants it ends that the
    warehouse had open."""
    out = mine.loc[mine["withdrawn_at"].notna(), ["customer_id", "channel", "purpose", "withdrawn_at"]]
    if out.empty:
        return 0
    out = out.drop_duplicates().sort_values("withdrawn_at", kind="stable")
    t = schema.consents.c
    stmt = (schema.consents.update()
            .where(t.customer_id == bindparam("c"), t.channel == bindparam("ch"), t.purpose == bindparam("p"),
                   t.withdrawn_at.is_(None), t.granted_at <= bindparam("w"))
            .values(withdrawn_at=bindparam("w")))
    for part in chunks(out.to_dict("records"), 10_000):
        conn.execute(stmt, [{"c": r["customer_id"], "ch": r["channel"], "p": r["purpose"],
                             "w": pd.Timestamp(r["withdrawn_at"]).to_pydatetime()} for r in part])
    open_ = old[old["withdrawn_at"].isna()]
    ends = open_.merge(out, on=["customer_id", "channel", "purpose"], suffixes=("", "_file"))
    return int(ends.loc[ends["granted_at"] <= ends["withdrawn_at_file"], "consent_id"].nunique())


def _suppressions(conn: Connection, p: Parsed, zone: DefaultZone, create: bool, report: Path | None) -> Imported:
    frame = p.frame.copy()
    now = utcnow()
    if "created_at" not in frame:
        frame["created_at"] = now
    frame["created_at"] = frame["created_at"].fillna(now)
    key = ["customer_id", "channel", "reason"]
    t = schema.suppressions.c
    old = []
    for part in chunks(list(pd.unique(frame["customer_id"].to_numpy(dtype=object)))):
        old += conn.execute(select(t.customer_id, t.channel, t.reason).where(among(t.customer_id, part))).all()
    have = {(c, ch, r) for c, ch, r in old}
    seen = frame[key].astype(object).where(frame[key].notna(), None)
    there = np.array([tuple(row) in have for row in seen.itertuples(index=False)], dtype=bool)
    again = seen.duplicated().to_numpy()  # the same suppression twice in the file: once is enough
    fresh = frame[~there & ~again]
    created, notes = _customers_for(conn, p, fresh, zone, create, report)
    written = bulk_insert(conn, schema.suppressions, fresh[[*key, "created_at"]])
    return Imported(written, created, skipped=int((there | again).sum()), warnings=notes)


def _customers_for(conn: Connection, p: Parsed, rows: pd.DataFrame, zone: DefaultZone, create: bool,
                   report: Path | None) -> tuple[int, tuple[str, ...]]:
    """History rows must belong to customers the warehouse has (L347), unless `create` adds the
    missing ones (signed up at their first row, the default timezone); how many it created, and notes."""
    notes = list(p.notes)
    if rows.empty:
        return 0, tuple(notes)
    ids = pd.unique(rows["customer_id"].to_numpy(dtype=object))
    strangers = ids[~_known(conn, pd.Series(ids, dtype=object))]
    if not len(strangers):
        return 0, tuple(notes)
    kind = p.kind
    if not create:
        problems = p.problems(report)
        at = np.flatnonzero(p.frame["customer_id"].isin(strangers).to_numpy() & p.frame.index.isin(rows.index))
        problems.add(at, "customer_id", lambda r: f"{p.frame['customer_id'].iloc[r]!r} is not a customer in the warehouse",
                     kind="not a customer in the warehouse")
        one = kind[:-1]
        problems.raise_if_any(code="L347", what=(
            f"{len(at):,} {kind if len(at) != 1 else one} of {len(strangers):,} customer{'s' if len(strangers) != 1 else ''} "
            "the warehouse does not have"), hint=(
            "import the customers first (`lifecycle data import customers FILE.csv`), or pass --create-customers to "
            f"add them (signed up at their first row here, timezone {zone.name})"))
    first = rows[rows["customer_id"].isin(strangers)].groupby("customer_id")[TIME_OF[kind]].min()
    created = bulk_insert(conn, schema.customers, pd.DataFrame(
        {"customer_id": first.index.astype(object), "signed_up_at": first.to_numpy(), "timezone": zone.name}))
    usual = _usual(p)
    if usual and _offset_hint(p, zone):  # the file's times say they live elsewhere
        offset, at = usual
        col = next(c for c, o in p.offsets.items() if o == offset)
        notes.append(f"the {created:,} customer{'s' if created != 1 else ''} created ha{'ve' if created != 1 else 's'} "
                     f"timezone {zone.name}, but the {col} values carry {offset}: give them theirs with `lifecycle data "
                     f"import customers FILE --default-timezone {zone_for_offset(offset, at) or 'ZONE'}` (an import "
                     "updates customers)" + ("" if zone.source else ", and set defaults.timezone in lifecycle.yaml "
                                                                    "for the next ones"))
    return created, tuple(notes)


_LOADERS = {"customers": _customers, "orders": _orders, "events": _events, "consents": _consents,
            "suppressions": _suppressions}
