"""Shared test set-up: an isolated LIFECYCLE_HOME, one Prefect harness per session, warehouses.

PostgreSQL tests read LIFECYCLE_TEST_PG_URL (`.ci/run` sets it) and run each test in a schema of
their own, dropped afterwards; without the variable they skip and say why.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parent.parent
END = dt.date(2026, 6, 30)  # a fixed "today" for generated worlds, so tests do not drift with the calendar
PG_REASON = "PostgreSQL tests need LIFECYCLE_TEST_PG_URL (e.g. postgresql://postgres@127.0.0.1:5432/test); .ci/run sets it"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own state folder and no inherited warehouse or config settings."""
    monkeypatch.setenv("LIFECYCLE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LIFECYCLE_DB_URL", raising=False)
    monkeypatch.delenv("LIFECYCLE_CONFIG", raising=False)
    from tasks import common

    common._engine.cache_clear()
    yield
    common._engine.cache_clear()


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server and database for every flow run in the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'warehouse.db'}"


@pytest.fixture
def pg_url():
    """A fresh schema in the test PostgreSQL database, as a URL whose search_path points at it."""
    base = os.environ.get("LIFECYCLE_TEST_PG_URL")
    if not base:
        pytest.skip(PG_REASON)
    from sqlalchemy import create_engine, text

    schema = f"lc_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def any_url(request, sqlite_url):
    """Both warehouse backends; the PostgreSQL one skips with a reason when not configured."""
    if request.param == "sqlite":
        return sqlite_url
    return request.getfixturevalue("pg_url")


def make_world(url: str, customers: int = 3000, seed: int = 3, end: dt.date = END):
    """A small generated world in the warehouse at `url`; returns the engine."""
    from infra.demoworld import generate_world, write_world
    from infra.warehouse.db import open_warehouse, upgrade

    engine = open_warehouse(url, create=True)
    upgrade(engine)
    write_world(engine, generate_world(customers, days=730, seed=seed, end=end))
    return engine


def flow_run_artifacts(flow_run_id: str) -> list:
    """The artifacts a flow run attached, read back through the Prefect API (as the UI shows them)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def fetch():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))

    return asyncio.run(fetch())


def add_first_buyers(engine, first_orders: dict, signed_up_at: dt.datetime) -> None:
    """New customers with push consent (since signing up) and one first order each, at the given times."""
    from infra.warehouse.schema import consents, customers, orders

    with engine.begin() as conn:
        conn.execute(customers.insert(), [{"customer_id": c, "signed_up_at": signed_up_at, "timezone": midday_zone(),
                                           "first_name": "New"} for c in first_orders])
        conn.execute(consents.insert(), [{"customer_id": c, "channel": "push", "purpose": "marketing",
                                          "granted_at": signed_up_at} for c in first_orders])
        conn.execute(orders.insert(), [{"order_id": f"o-{c}", "customer_id": c, "ordered_at": t, "amount": 99.0}
                                       for c, t in first_orders.items()])


def midday_zone() -> str:
    """A timezone where it is early afternoon now, so quiet hours never defer a test's touches."""
    from infra.warehouse.bulk import utcnow

    offset = (14 - utcnow().hour + 12) % 24 - 12  # hours east of UTC, in [-12, 11]
    return f"Etc/GMT{-offset:+d}" if offset else "UTC"
