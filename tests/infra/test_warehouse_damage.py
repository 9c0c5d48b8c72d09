"""A damaged warehouse is one clear L4xx line with what to do, for every command that reads it.

Before, each of these was a traceback: a file of random bytes (`file is not a database`), a truncated
copy (`database disk image is malformed`), a dropped table (`no such table`, retried twice in extract),
and an as-of date of 0001-01-01 or 9999-12-31 (`OverflowError: date value out of range`).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil

import pytest
from sqlalchemy import text

from flows.cli import main
from infra.errors import WarehouseError
from infra.warehouse.db import open_warehouse
from tasks import kpis
from tasks.extract import extract_all
from tests.conftest import END, make_world

COMMANDS = [
    ["run", "churn_winback", "--as-of", END.isoformat()],
    ["plan", "churn_winback", "--as-of", END.isoformat()],
    ["explain", "C0000001"],
    ["kpis"],
    ["report", "churn_winback"],
    ["db", "status"],
    ["model", "train"],
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small warehouse (its WAL checkpointed into the file), copied and damaged by each test."""
    folder = tmp_path_factory.mktemp("damage")
    engine = make_world(f"sqlite:///{folder / 'clean.db'}", customers=300, seed=2)
    with engine.begin() as conn:
        conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    engine.dispose()
    return folder / "clean.db"


def _copy(world, tmp_path) -> str:
    path = tmp_path / "warehouse.db"
    shutil.copy(world, path)
    return str(path)


def _fails_cleanly(capsys, argv: list[str], code: str, exit_code: int = 1) -> str:
    assert main(argv) == exit_code, argv
    err = capsys.readouterr().err
    assert err.startswith(f"error[{code}]: ") and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.strip()]) == 2 and "\n  hint: " in err  # one line + a hint
    return err


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_random_bytes(tmp_path, capsys, argv):
    path = tmp_path / "warehouse.db"
    path.write_bytes(os.urandom(64 * 1024))
    err = _fails_cleanly(capsys, [*argv, "--db", f"sqlite:///{path}"], "L411")
    assert "is not a SQLite database" in err and "restore the file from a backup" in err


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_truncated_file(world, tmp_path, capsys, argv):
    path = _copy(world, tmp_path)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) * 3 // 4)
    err = _fails_cleanly(capsys, [*argv, "--db", f"sqlite:///{path}"], "L412")
    assert "is damaged (database disk image is malformed)" in err and ".recover" in err


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_dropped_table(world, tmp_path, capsys, argv):
    path = _copy(world, tmp_path)
    dropped = "touches" if argv[0] == "report" else "orders"  # report reads the ledger first
    with open_warehouse(f"sqlite:///{path}").begin() as conn:
        conn.execute(text(f"DROP TABLE {dropped}"))
    err = _fails_cleanly(capsys, [*argv, "--db", f"sqlite:///{path}"], "L413")
    assert f"has no table {dropped}" in err and "restore it from a backup" in err


def test_dropped_column(world, tmp_path, capsys):
    path = _copy(world, tmp_path)
    with open_warehouse(f"sqlite:///{path}").begin() as conn:
        conn.execute(text("ALTER TABLE customers DROP COLUMN advisor_id"))
    err = _fails_cleanly(capsys, ["kpis", "--db", f"sqlite:///{path}"], "L414")
    assert "table customers has no column advisor_id" in err


def test_a_table_dropped_while_a_command_runs(any_url):
    """After the checks at the start: the error where it surfaces, through SQLAlchemy or the extract's own
    cursor, is the same WarehouseError."""
    engine = make_world(any_url, customers=200, seed=3)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE events"))
    with pytest.raises(WarehouseError) as err:
        kpis.compute(engine)
    assert err.value.code == "L413" and "has no table events" in err.value.message
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE orders"))
    with pytest.raises(WarehouseError) as err:
        extract_all(engine, END)
    assert err.value.code == "L413"


@pytest.mark.parametrize("argv", [
    ["run", "churn_winback", "--as-of", "0001-01-01"],
    ["plan", "churn_winback", "--as-of", "9999-12-31"],
    ["explain", "C0000001", "--as-of", "0001-01-01"],
    ["kpis", "--to", "9999-12-31"],
    ["report", "churn_winback", "--from", "0001-01-01"],
    ["model", "train", "--as-of", "9999-12-31"],
    ["data", "generate", "--customers", "10", "--days", "100000000"],
], ids=lambda a: " ".join(a[:2]))
def test_dates_outside_what_lifecycle_works_with(world, tmp_path, capsys, argv):
    err = _fails_cleanly(capsys, [*argv, "--db", f"sqlite:///{_copy(world, tmp_path)}"], "L349", exit_code=2)
    assert "1910-01-01 to 2189-12-31" in err or "reaches back before 1910-01-01" in err


def test_dates_inside_pass(world, tmp_path, capsys):
    assert main(["kpis", "--to", (END - dt.timedelta(days=1)).isoformat(), "--db", f"sqlite:///{_copy(world, tmp_path)}",
                 "--out", str(tmp_path / "k"), "--format", "json"]) == 0
    assert '"to": "2026-06-29"' in capsys.readouterr().out
