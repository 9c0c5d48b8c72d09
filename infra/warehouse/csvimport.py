"""Bring your own data: read an orders / customers / events / consents / suppressions CSV and check it whole.

Every row is checked before anything is written; problems come back as `FILE:LINE: column X: ...`
(the header is line 1; a value spanning lines counts them all), the first MAX_PROBLEMS of them with a
count by kind, all of them in the `--errors` file (infra/warehouse/csvproblems.py), and nothing is
imported. What is refused is what a later step could not hold (infra/warehouse/limits.py): the file
must be UTF-8 CSV with one header, every row as many fields as the header; datetimes are ISO 8601
dates or datetimes within 1900-01-01 to 2200-01-01 (an offset such as `+08:00` or `Z` is converted to
UTC, a datetime without one is taken as UTC); amounts plain finite numbers below 10^10 (no currency
symbols or thousands separators; negative amounts, refunds, are refused: net them into their order or
leave them out); text without control characters and within its column's length (schema.py);
timezones that zoneinfo knows; emails with one @ and a dotted domain; phones of 6-15 digits with an
optional leading + (spaces, dashes, dots and brackets are removed); event types from the vocabulary
(`--map-type SRC=DST` renames a source's own); member tiers, consent channels and purposes and
suppression reasons from theirs (VOCABULARY); a consent withdrawn no earlier than it was granted.
Extra columns are ignored; `--map src=dst` renames a column first. Writing the checked rows into the
warehouse is infra/warehouse/csvload.py.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import re
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from infra.errors import UsageError
from infra.settings import CONSENT_CHANNELS, EVENT_TYPES
from infra.warehouse import limits
from infra.warehouse.csvproblems import Problems

Kind = Literal["orders", "customers", "events", "consents", "suppressions"]
KINDS: tuple[str, ...] = ("orders", "customers", "events", "consents", "suppressions")
TIERS = ("bronze", "silver", "gold", "diamond")
# What consents are for (the warehouse's consents.purpose; a channel's `purpose:` in lifecycle.yaml
# adds its own) and why a customer is suppressed (suppressions.reason)
CONSENT_PURPOSES = ("marketing", "service")
SUPPRESSION_REASONS = ("complaint", "hard_bounce", "manual")
# the types an events file may hold: the vocabulary less orders, which are imported as orders
ROW_EVENT_TYPES = tuple(t for t in EVENT_TYPES if t != "order.placed")
EMAIL = r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+"
PHONE = r"\+?[0-9]{6,15}"
PHONE_SEPARATORS = r"[\s\-.()]"
OFFSET = r"[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(Z|[+-]\d{2}(?::?\d{2})?)$"  # a datetime's UTC offset


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
    "consents": Format(("customer_id", "channel", "granted_at"), ("purpose", "withdrawn_at"),
                       datetimes=("granted_at", "withdrawn_at")),
    "suppressions": Format(("customer_id", "reason"), ("channel", "created_at"), datetimes=("created_at",)),
}
# Closed vocabularies, by (kind, column): values are read lower-case; `purpose` also takes the project's own
VOCABULARY: dict[tuple[str, str], tuple[str, ...]] = {
    ("customers", "member_tier"): TIERS,
    ("consents", "channel"): CONSENT_CHANNELS,
    ("consents", "purpose"): CONSENT_PURPOSES,
    ("suppressions", "channel"): CONSENT_CHANNELS,
    ("suppressions", "reason"): SUPPRESSION_REASONS,
}


def format_hint(kind: str) -> str:
    """What a file of this kind holds, and how to make one that fits."""
    f = FORMATS[kind]
    return (f"{kind} files need the columns {', '.join(f.required)} (optional: {', '.join(f.optional)}); "
            "dates as ISO 8601 (2026-03-31 or 2026-03-31T14:05:00+08:00), plain numbers; rename columns "
            "with --map SOURCE=TARGET")


# ---- the file as text, then as CSV records ------------------------------------------------------

def _text(path: Path) -> str:
    """The file decoded as UTF-8 (a BOM is dropped); L342 naming the line of the first byte that is not."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        try:
            data.decode("gb18030")
            guess = "it reads as GBK/GB18030: convert it with `iconv -f GB18030 -t UTF-8 FILE > FILE.utf8.csv`"
        except UnicodeDecodeError:
            guess = "convert it with iconv -f ENCODING -t UTF-8"
        raise UsageError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); nothing was imported",
                         hint=f"save the file as UTF-8 (Excel: 'CSV UTF-8'), or {guess}", code="L342") from None


@dataclass(frozen=True)
class _Records:
    header: list[str]
    lines: np.ndarray  # the line each data record starts on
    blank: np.ndarray  # records with no values at all (blank lines), skipped


def _records(path: Path, text: str, report: Path | None = None) -> _Records:
    """Tokenise the whole file once with the csv module (strict: an unclosed quote is an error, not the
    rest of the file read as one value): the header, where each record starts, and every record whose
    field count differs from the header's (L345), so pandas then reads values from a well-formed file."""
    if not text.strip():
        raise UsageError(f"{path}: the file is empty (no header row); nothing was imported",
                         hint=_hint_for(path), code="L341")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, skipinitialspace=True)
    starts: list[int] = []
    blank: list[bool] = []
    wrong: list[tuple[int, int]] = []  # (record, fields)
    header: list[str] | None = None
    previous = 0
    try:
        for record in reader:
            if header is None:
                header = record
                if not any(v.strip() for v in header):
                    raise UsageError(f"{path}:1: the first line is blank; it must be the header; nothing was imported",
                                     hint=_hint_for(path), code="L341")
            else:
                empty = not record or (len(record) == 1 and not record[0].strip())
                if not empty and len(record) != len(header):
                    wrong.append((len(starts), len(record)))
                starts.append(previous + 1)
                blank.append(empty)
            previous = reader.line_num
    except csv.Error as exc:
        line = previous + 1
        why = ("a quoted value starts on this line and its closing quote (\") is missing"
               if "end of data" in str(exc) or "field larger" in str(exc) else f"not valid CSV: {exc}")
        raise UsageError(f"{path}:{line}: {why}; nothing was imported",
                         hint="a value with a comma, quote or line break goes in double quotes, and a quote inside "
                              "it is written twice: \"12\"\" screen, black\"", code="L343") from None
    lines = np.asarray(starts, dtype=np.int64)
    if wrong:
        problems = Problems(path, lines, report=report)
        fields = dict(wrong)
        problems.add(np.array(list(fields), dtype=np.int64), None, lambda r: (
            f"{fields[r]} field{'s' if fields[r] != 1 else ''} where the header has {len(header)}"),
            kind="rows with another number of fields")
        problems.raise_if_any(code="L345", what=f"{len(wrong):,} row{'s' if len(wrong) != 1 else ''} with a "
                              "different number of fields than the header",
                              hint="a value containing a comma must be in double quotes (\"1,234.50\"); a row with "
                                   "fewer fields lacks a value: leave it empty between commas (a,,c)")
    return _Records([h.strip() for h in header], lines, np.asarray(blank, dtype=bool))


def _hint_for(path: Path) -> str:
    return "a CSV file starts with a header row naming its columns, e.g. customer_id,ordered_at,amount"


def _columns(path: Path, header: list[str], mapping: dict[str, str]) -> list[str]:
    """The header after --map; a name twice (in the file, or made twice by --map) is L344."""
    names = [mapping.get(h, h) for h in header]
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        if name:
            seen.setdefault(name, []).append(i)
    twice = {n: at for n, at in seen.items() if len(at) > 1}
    if twice:
        parts = []
        for name, at in twice.items():
            mapped = [f"--map {header[i]}={name}" for i in at if header[i] != name]
            parts.append(f"column {name!r} appears {len(at)} times (columns {', '.join(str(i + 1) for i in at)}"
                         + (f"; made by {', '.join(mapped)}" if mapped else "") + ")")
        raise UsageError(f"{path}:1: {'; '.join(parts)}; nothing was imported",
                         hint="each column name once: rename or remove the repeated column in the file, or map a "
                              "source column to a name the file does not already have", code="L344")
    return names


def _frame(path: Path, text: str, records: _Records, names: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Every record's values as text (pandas' C parser on the well-formed file), blank lines dropped;
    and the line each remaining row starts on."""
    raw = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True,
                      skip_blank_lines=False, header=0)
    if len(raw) != len(records.lines) or len(raw.columns) != len(names):  # never seen: the two readers disagree
        rows = list(csv.reader(io.StringIO(text, newline=""), skipinitialspace=True))[1:]
        raw = pd.DataFrame([r if len(r) == len(names) else [""] * len(names) for r in rows], dtype=str)
    raw.columns = names
    keep = ~records.blank
    return raw[keep].reset_index(drop=True), records.lines[keep]


# ---- values -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Parsed:
    """A checked file: its rows as typed columns (`frame`, with `_line`), its cells as text (`cells`, for
    the --errors file), the UTC offset its datetimes carry most often per column (`offsets`, "+08:00": a
    hint for a timezone), and what a user should know about columns it lacks (`notes`)."""

    kind: str
    path: Path
    frame: pd.DataFrame
    cells: pd.DataFrame
    offsets: dict[str, str]
    notes: tuple[str, ...] = ()

    def problems(self, report: Path | None = None) -> Problems:
        """An empty collection for problems found later (against the warehouse), by the same lines."""
        return Problems(self.path, self.frame["_line"].to_numpy(), kind=self.kind, hint=format_hint(self.kind),
                        values=self.cells, report=report)


def read(kind: Kind, path: Path | str, mapping: dict[str, str] | None = None,
         type_map: dict[str, str] | None = None) -> pd.DataFrame:
    """The validated rows of a CSV file as typed columns (datetimes naive UTC); UsageError on any problem.

    `type_map` (events): source event types renamed to the vocabulary's before they are checked.
    """
    return parse(kind, path, mapping, type_map).frame


def parse(kind: Kind, path: Path | str, mapping: dict[str, str] | None = None, type_map: dict[str, str] | None = None,
          *, purposes: tuple[str, ...] = CONSENT_PURPOSES, report: Path | None = None) -> Parsed:
    """`read`, keeping what an import needs besides the rows. `purposes`: the consent purposes the project
    knows (CONSENT_PURPOSES and its channels' own); `report`: the --errors file, written on problems."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such file: {path}", hint="give the path of a CSV file", code="L321")
    fmt = FORMATS[kind]
    text = _text(path)
    records = _records(path, text, report)
    names = _columns(path, records.header, mapping or {})
    lacking = [c for c in fmt.required if c not in names]
    if lacking:
        raise UsageError(f"{path}:1: missing column{'s' if len(lacking) > 1 else ''} {', '.join(lacking)} "
                         f"(the header has: {', '.join(names)}); nothing was imported",
                         hint=format_hint(kind), code="L320")
    raw, lines = _frame(path, text, records, names)
    problems = Problems(path, lines, kind=kind, hint=format_hint(kind), values=raw, report=report)
    out = pd.DataFrame(index=raw.index)
    offsets: dict[str, str] = {}
    for col in [c for c in (*fmt.required, *fmt.optional) if c in raw.columns]:
        text_col = raw[col].str.strip()
        blank = (text_col == "").to_numpy()
        if col in fmt.required and blank.any():
            problems.add(np.flatnonzero(blank), col, "empty (required)", kind="empty")
        if col in fmt.datetimes or col in fmt.dates:
            out[col] = _times(problems, col, text_col, blank, date=col in fmt.dates, required=col in fmt.required)
            offset = _usual_offset(text_col) if col in fmt.datetimes else None
            if offset:
                offsets[col] = offset
        elif col in fmt.numbers or col in fmt.integers:
            out[col] = _numbers(problems, col, text_col, blank, whole=col in fmt.integers)
        else:
            out[col] = _text_values(problems, kind, col, text_col, blank, type_map or {})
    for (of, col), words in VOCABULARY.items():
        if of == kind and col in out:
            out[col] = _vocabulary(problems, col, out[col], purposes if col == "purpose" else words)
    notes = _defaults(kind, out)
    if kind == "consents" and "withdrawn_at" in out:
        early = np.flatnonzero((out["withdrawn_at"] < out["granted_at"]).to_numpy(dtype=bool, na_value=False))
        problems.add(early, "withdrawn_at", lambda r: (
            f"{raw['withdrawn_at'].iloc[r].strip()!r} is before granted_at {raw['granted_at'].iloc[r].strip()!r}: "
            "a consent is withdrawn after it was granted (swapped columns?)"), kind="before granted_at")
    key = KEYS.get(kind)
    if key and all(k in out for k in key):
        _repeats(problems, out, key)
    problems.raise_if_any()
    if kind == "orders":
        out = _with_order_ids(out, lines)
    out["_line"] = lines
    return Parsed(kind, path, out.reset_index(drop=True), raw.reset_index(drop=True), offsets, notes)


# What makes a row the same row twice, per kind: a repeat within the file is refused
KEYS: dict[str, tuple[str, ...]] = {"orders": ("order_id",), "customers": ("customer_id",),
                                    "consents": ("customer_id", "channel", "purpose", "granted_at")}


def _repeats(problems: Problems, out: pd.DataFrame, key: tuple[str, ...]) -> None:
    """Rows whose key an earlier row of the file has: each names the line it repeats."""
    joined = out[key[0]].astype(object)
    for col in key[1:]:
        joined = joined.astype(str) + "\x1f" + out[col].astype(str)
    joined = joined.where(out[list(key)].notna().all(axis=1).to_numpy())
    dup = (joined.notna() & joined.duplicated(keep=False)).to_numpy()
    if not dup.any():
        return
    first = pd.Series(np.arange(len(out)), index=out.index)[dup].groupby(joined[dup]).transform("min")
    later = np.flatnonzero(dup & joined.duplicated(keep="first").to_numpy())
    if len(key) == 1:
        problems.add(later, key[0], lambda r: f"{out[key[0]].iloc[r]!r} repeats line {problems.line(int(first.loc[out.index[r]]))}",
                     kind="repeated in the file")
    else:
        problems.add(later, None, lambda r: (f"the same {', '.join(key)} as line "
                                             f"{problems.line(int(first.loc[out.index[r]]))}"),
                     kind=f"rows repeating an earlier one's {', '.join(key)}")


def _vocabulary(problems: Problems, col: str, values: pd.Series, words: tuple[str, ...]) -> pd.Series:
    """A closed vocabulary's column, read lower-case; anything else is refused with a near match."""
    lower = values.str.lower()
    bad = np.flatnonzero((lower.notna() & ~lower.isin(words)).to_numpy())

    def why(r: int) -> str:
        close = difflib.get_close_matches(str(lower.iloc[r]), words, n=1, cutoff=0.6)
        return f"{values.iloc[r]!r} is not one of {', '.join(words)}" + (f" (did you mean '{close[0]}'?)" if close else "")

    problems.add(bad, col, why, kind=f"not one of {', '.join(words)}" if len(words) <= 4 else "not a known value")
    return lower


def _defaults(kind: str, out: pd.DataFrame) -> tuple[str, ...]:
    """Optional columns a file lacks that change what its rows mean: filled, and said once (not per row)."""
    if kind == "consents" and "purpose" not in out:
        out["purpose"] = "marketing"
        return ("no purpose column: every row is a marketing consent",)
    if kind == "suppressions" and "channel" not in out:
        out["channel"] = None
        return ("no channel column: every row suppresses its customer on every channel",)
    return ()


def _usual_offset(text: pd.Series) -> str | None:
    """The UTC offset the column's datetimes carry most often (`+08:00`; `Z` is +00:00), None without any."""
    found = text.str.extract(OFFSET, expand=False).dropna()
    if found.empty:
        return None
    usual = found.value_counts().index[0]
    if usual == "Z":
        return "+00:00"
    sign, digits = usual[0], usual[1:].replace(":", "")
    return f"{sign}{digits[:2]}:{(digits[2:] or '00')[:2]}"


def _times(problems: Problems, col: str, text: pd.Series, blank: np.ndarray, *, date: bool,
           required: bool) -> pd.Series:
    """ISO 8601 values as naive UTC datetimes (or dates), within the window limits.py names."""
    parsed = pd.to_datetime(text.where(~blank), format="ISO8601", errors="coerce", utc=True)
    bad = parsed.isna().to_numpy() & ~blank
    problems.add(np.flatnonzero(bad), col, lambda r: f"not an ISO 8601 date or datetime: {text.iloc[r]!r}",
                 kind="not an ISO 8601 date")
    parsed = parsed.dt.tz_convert(None)
    outside = ~limits.in_window(parsed) & ~bad & ~blank
    instead = "leave the row out" if required else "leave it empty"
    problems.add(np.flatnonzero(outside), col, lambda r: (
        f"{text.iloc[r]!r} is outside the dates lifecycle works with ({limits.WINDOW_TEXT}); a placeholder such as "
        f"0001-01-01 or 9999-12-31 is not a date: correct it or {instead}"), kind=f"outside {limits.WINDOW_TEXT}")
    parsed = parsed.where(~outside)
    return parsed.dt.date if date else parsed


def _numbers(problems: Problems, col: str, text: pd.Series, blank: np.ndarray, *, whole: bool) -> pd.Series:
    """Plain finite numbers within what the warehouse's column holds; whole numbers for INTEGER columns."""
    number = pd.to_numeric(text.where(~blank), errors="coerce").astype("float64")
    bad = number.isna().to_numpy() & ~blank
    problems.add(np.flatnonzero(bad), col, lambda r: (
        f"not a {'whole ' if whole else ''}number: {text.iloc[r]!r}"
        " (plain digits with a '.' for decimals; no currency symbols or thousands separators)"),
        kind=f"not a {'whole ' if whole else ''}number")
    values = number.to_numpy()
    infinite = ~np.isfinite(values) & ~np.isnan(values)
    problems.add(np.flatnonzero(infinite), col, lambda r: (
        f"not a finite number: {text.iloc[r]!r} (infinity, or more digits than any amount has)"), kind="not finite")
    lo, hi = (limits.INT_MIN, limits.INT_MAX) if whole else (-limits.MAX_AMOUNT, limits.MAX_AMOUNT)
    with np.errstate(invalid="ignore"):
        beyond = np.isfinite(values) & ((values < lo) | (values > hi))
        fraction = np.isfinite(values) & ~beyond & (values != np.round(values)) if whole else np.zeros(len(values), bool)
    problems.add(np.flatnonzero(beyond), col, lambda r: (
        f"{text.iloc[r]} is beyond what the warehouse holds ({'whole numbers ' if whole else ''}up to {hi:,.{0 if whole else 2}f})"),
        kind="beyond what the warehouse holds")
    problems.add(np.flatnonzero(fraction), col, lambda r: f"not a whole number: {text.iloc[r]!r}",
                 kind="not a whole number")
    usable = np.isfinite(values) & ~beyond
    negative = np.flatnonzero(usable & (values < 0))
    problems.add(negative, col, lambda r: (
        f"negative ({text.iloc[r]}): refunds are not orders; net them into the original order or leave them out"
        if col == "amount" else f"negative ({text.iloc[r]})"), kind="negative")
    number = number.where(usable & ~fraction)
    return number.round().astype("Int64") if whole else number


def _text_values(problems: Problems, kind: str, col: str, text: pd.Series, blank: np.ndarray,
                 type_map: dict[str, str]) -> pd.Series:
    """Text: no control characters, within the column's length, and per column its own form."""
    control = text.str.contains(limits.CONTROL, regex=True).to_numpy(dtype=bool, na_value=False)
    problems.add(np.flatnonzero(control), col, lambda r: (
        f"contains a control character ({_first_control(text.iloc[r])}): ids and text must be printable "
        "(no NUL, tabs or line breaks)"), kind="with a control character")
    if col == "type" and type_map:
        text = text.where(~text.isin(list(type_map)), text.map(type_map))
    length = limits.text_length(kind, col)
    if length is not None:
        sizes = text.str.len().to_numpy()
        too_long = np.flatnonzero((sizes > length) & ~control)
        problems.add(too_long, col, lambda r: (
            f"longer than {length} characters ({sizes[r]:,}): the warehouse's {kind}.{col} holds {length}"),
            kind=f"longer than {length} characters")
    checked = ~blank & ~control
    if col == "timezone":
        bad = np.flatnonzero(checked & ~limits.zone_mask(text.where(checked)))
        problems.add(bad, col, lambda r: f"{text.iloc[r]!r} is not a timezone zoneinfo knows{zone_near(text.iloc[r])} "
                                         "(IANA names such as Asia/Shanghai or Europe/Berlin)",
                     kind="not a timezone zoneinfo knows")
    elif col == "email":
        bad = np.flatnonzero(checked & ~text.str.fullmatch(EMAIL).to_numpy(dtype=bool, na_value=False))
        problems.add(bad, col, lambda r: f"{text.iloc[r]!r} is not an email address (one @, no spaces, a dot in the "
                                         "domain: name@example.com)", kind="not an email address")
    elif col == "phone":
        given, text = text, text.str.replace(PHONE_SEPARATORS, "", regex=True)
        bad = np.flatnonzero(checked & ~text.str.fullmatch(PHONE).to_numpy(dtype=bool, na_value=False))
        problems.add(bad, col, lambda r: f"{given.iloc[r]!r} is not a phone number (6 to 15 digits with an optional "
                                         "leading +; spaces, dashes, dots and brackets are removed)",
                     kind="not a phone number")
    elif col == "type" and kind == "events":
        _unknown_types(problems, text, checked)
    return text.where(~blank, None)


def _first_control(value: str) -> str:
    found = re.search(limits.CONTROL, value)
    return f"{found.group()!r} at character {found.start() + 1}" if found else "?"


def zone_near(name: str) -> str:
    close = difflib.get_close_matches(name.strip(), sorted(zoneinfo.available_timezones()), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown_types(problems: Problems, types: pd.Series, checked: np.ndarray) -> None:
    """One problem per unknown event type, at its first row, with how many rows have it."""
    unknown = checked & ~types.isin(ROW_EVENT_TYPES).to_numpy()
    if not unknown.any():
        return
    rows = np.flatnonzero(unknown)
    values = types.iloc[rows]
    for value, at in sorted(values.groupby(values, sort=False).indices.items(), key=lambda kv: rows[kv[1][0]]):
        where = rows[at]
        if value == "order.placed":
            why = "orders are imported as orders (`lifecycle data import orders FILE.csv`), not as events"
        else:
            close = difflib.get_close_matches(value, ROW_EVENT_TYPES, n=1, cutoff=0.5)
            target = close[0] if close else "app.visit"
            why = (f"not an event type lifecycle knows{f' (did you mean {close[0]!r}?)' if close else ''}; map it "
                   f"with --map-type {value}={target}, or leave those rows out (types: {', '.join(ROW_EVENT_TYPES)})")
        count = f"{len(where):,} row{'s' if len(where) != 1 else ''}, the first on this line"
        problems.add_group(where, "type", f"{value!r} ({count}): {why}", kind="not an event type lifecycle knows")


def _with_order_ids(orders: pd.DataFrame, lines: np.ndarray) -> pd.DataFrame:
    """Rows without an order_id get a stable one from (customer_id, ordered_at, amount, line)."""
    if "order_id" not in orders:
        orders["order_id"] = None
    missing = orders["order_id"].isna()
    if missing.any():
        basis = (orders["customer_id"] + "|" + orders["ordered_at"].astype(str) + "|"
                 + orders["amount"].astype(str) + "|" + pd.Series(lines, index=orders.index).astype(str))[missing]
        orders.loc[missing, "order_id"] = ["csv-" + hashlib.sha256(b.encode()).hexdigest()[:20] for b in basis]
    return orders


# ---- the command line's mappings -----------------------------------------------------------

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


def parse_type_mapping(pairs: list[str] | None) -> dict[str, str]:
    """`--map-type src=dst` pairs: a source's event type -> one of the vocabulary's (L346 otherwise)."""
    mapping = {}
    for pair in pairs or []:
        src, sep, dst = (p.strip() for p in pair.partition("="))
        if not sep or not src or not dst:
            raise UsageError(f"--map-type needs SOURCE_TYPE=TYPE, got {pair!r}",
                             hint="e.g. --map-type page_view=product.view", code="L346")
        if dst not in ROW_EVENT_TYPES:
            close = difflib.get_close_matches(dst, ROW_EVENT_TYPES, n=1, cutoff=0.5)
            raise UsageError(f"--map-type {pair}: {dst!r} is not an event type lifecycle knows",
                             hint=(f"did you mean '{close[0]}'? " if close else "")
                             + f"event types: {', '.join(ROW_EVENT_TYPES)}", code="L346")
        mapping[src] = dst
    return mapping
