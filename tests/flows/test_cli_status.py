"""`lifecycle db status` as a user meets it: every table counted."""

from __future__ import annotations

from infra.warehouse import schema
from tests.conftest import make_world
from tests.flows.test_cli import cli


def test_db_status_lists_every_table_of_the_schema_with_its_row_count(sqlite_url):
    make_world(sqlite_url, customers=300, seed=2)
    r = cli("db", "status", "--db", sqlite_url)
    assert r.returncode == 0, r.stdout + r.stderr
    counts = {}
    for line in r.stdout.splitlines()[2:]:
        name, n = line.split()
        counts[name] = int(n.replace(",", ""))
    assert list(counts) == list(schema.metadata.tables), r.stdout  # journeys, claimants, suppressions, ... too
    assert counts["customers"] == 300 and counts["suppressions"] == 0
