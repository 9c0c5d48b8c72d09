"""What is wrong in a CSV file being imported: every problem kept, counted by kind, the first few shown.

The terminal gets `FILE:LINE: column X: ...` for the first MAX_PROBLEMS (earliest lines first) and a
count by kind ("312 problems in the orders file (300 ordered_at outside 1900-01-01 to 2200-01-01, 12
amount not a number)"); `--errors FILE` gets all of them as CSV (line, column, value, problem), the
value as the file had it with spreadsheet formulas defused (infra/redact.py csv_safe). Messages are
formatted only for the lines shown or written, so a million bad rows cost no million strings unless
they are asked for.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from infra.errors import UsageError
from infra.redact import csv_safe

MAX_PROBLEMS = 20
KINDS_SHOWN = 6  # kinds named in the count; the rest as "N more of other kinds"
ERRORS_HEADER = ("line", "column", "value", "problem")


@dataclass(frozen=True)
class _Batch:
    """Rows with one kind of problem. A group (`grouped`) shows one line, at its first row, for all of them."""

    rows: np.ndarray
    column: str | None
    message: str | Callable[[int], str]
    kind: str
    grouped: bool = False
    once: bool = False  # counted as one problem (a column the file lacks), though every row is written out

    @property
    def weight(self) -> int:
        return 1 if self.once else len(self.rows)

    def text(self, row: int) -> str:
        return self.message(row) if callable(self.message) else self.message


class Problems:
    """Collects a file's problems; `raise_if_any` raises them all at once (and writes `report`, if given).

    `lines[row]` is the file line a data row starts on (the header is line 1); without it, row + 2.
    `values` holds the file's cells as text (by column), for the --errors file's `value`; `report` is
    the --errors file.
    """

    def __init__(self, path: Path, lines: np.ndarray | None = None, *, kind: str = "", hint: str | None = None,
                 values: pd.DataFrame | None = None, report: Path | None = None) -> None:
        self.path, self.at, self.values, self.report = path, lines, values, report
        self.kind, self.hint = kind, hint  # the file's kind ("orders") and what to do, for the error
        self.batches: list[_Batch] = []

    def line(self, row: int) -> int:
        return int(self.at[row]) if self.at is not None else int(row) + 2

    @property
    def total(self) -> int:
        return sum(b.weight for b in self.batches)

    def add(self, rows: np.ndarray, column: str | None, message: str | Callable[[int], str], *,
            kind: str | None = None) -> None:
        """`rows` are 0-based data rows; `message` a string or a function of the row; `kind` names the
        problem in the count ("not a number"; default: the message, when it is a string)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows):
            self.batches.append(_Batch(rows, column, message, kind or _kind_of(message)))

    def add_group(self, rows: np.ndarray, column: str, message: str, *, kind: str | None = None,
                  once: bool = False) -> None:
        """Many rows with one problem (an unknown event type): one line, at the first of them, counted once
        each, or `once` in all (a column the file lacks); every row goes to the --errors file."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows):
            self.batches.append(_Batch(rows, column, message, kind or _kind_of(message), grouped=True, once=once))

    def shown(self) -> list[str]:
        """The first MAX_PROBLEMS problems by line, as `FILE:LINE: column X: ...`."""
        picks: list[tuple[int, int, int]] = []  # (line, batch, row)
        for b, batch in enumerate(self.batches):
            rows = batch.rows[:1] if batch.grouped else batch.rows
            lines = self.at[rows] if self.at is not None else rows + 2
            first = np.argsort(lines, kind="stable")[:MAX_PROBLEMS]
            picks += [(int(lines[i]), b, int(rows[i])) for i in first]
        picks.sort(key=lambda p: (p[0], p[1]))
        return [self._located(self.batches[b], row) for _, b, row in picks[:MAX_PROBLEMS]]

    def _located(self, batch: _Batch, row: int) -> str:
        where = f"column {batch.column}: " if batch.column else ""
        return f"{self.path.name}:{self.line(row)}: {where}{batch.text(row)}"

    def by_kind(self) -> str:
        """`300 ordered_at outside 1900-01-01 to 2200-01-01, 12 amount not a number`: most frequent first."""
        counts: dict[tuple[str | None, str], int] = {}
        for batch in self.batches:
            key = (batch.column, batch.kind)
            counts[key] = counts.get(key, 0) + batch.weight
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])
        parts = [f"{n:,} {column + ' ' if column else ''}{kind}" for (column, kind), n in ranked[:KINDS_SHOWN]]
        rest = sum(n for _, n in ranked[KINDS_SHOWN:])
        return ", ".join(parts) + (f", {rest:,} more of other kinds" if rest else "")

    def records(self) -> Iterator[tuple[int, str, str, str]]:
        """Every problem as (line, column, value, problem), in line order."""
        every = [(self.line(int(r)), b, int(r)) for b, batch in enumerate(self.batches) for r in batch.rows]
        every.sort(key=lambda p: (p[0], p[1]))
        for line, b, row in every:
            batch = self.batches[b]
            yield line, batch.column or "", self._value(batch.column, row), batch.text(row)

    def _value(self, column: str | None, row: int) -> str:
        if self.values is None or column is None or column not in self.values.columns or row >= len(self.values):
            return ""
        value = self.values[column].iloc[row]
        return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)

    def raise_if_any(self, *, code: str = "L320", hint: str | None = None, what: str | None = None) -> None:
        if not self.batches:
            return
        total = self.total
        if self.report is not None:
            write_errors(self.report, self.records())
        shown = self.shown()
        more = total - len(shown)
        body = "\n".join(shown) + (f"\n... and {more:,} more problem{'s' if more != 1 else ''}" if more > 0 else "")
        if self.report is not None:
            body += f"\nevery problem is in {self.report} (line, column, value, problem)"
        counted = f" ({self.by_kind()})" if total > 1 else ""
        what = what or f"{total:,} problem{'s' if total != 1 else ''} in the {self.kind} file{counted}"
        error = UsageError(f"{self.path}: {what}; nothing was imported\n{body}", hint=hint or self.hint, code=code)
        error.reported = self.report is not None  # the --errors file has them: the import need not write it again
        raise error


def _kind_of(message: str | Callable[[int], str]) -> str:
    return message if isinstance(message, str) else "problem"


def write_errors(path: Path, records) -> int:
    """All problems as CSV (line, column, value, problem), text cells defused for spreadsheets; rows written.
    A file that cannot be written is L351, after the problems themselves were found."""
    try:
        with open(path, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(ERRORS_HEADER)
            n = 0
            for line, column, value, problem in records:
                writer.writerow([line, csv_safe(column), csv_safe(value), csv_safe(problem)])
                n += 1
    except OSError as exc:
        raise UsageError(f"--errors {path}: cannot write the problems there ({exc.strerror or exc})",
                         hint="give a path in a folder you can write to", code="L351") from None
    return n
