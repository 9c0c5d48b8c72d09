"""What every task shares: the warehouse engine for this process and the Prefect task defaults."""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy.engine import Engine

from infra.settings import load_config, resolve_db_url
from infra.warehouse.db import is_transient, open_warehouse


@functools.lru_cache(maxsize=8)
def _engine(url: str) -> Engine:
    return open_warehouse(url)


def warehouse() -> Engine:
    """The warehouse named by LIFECYCLE_DB_URL / the config (the CLI turns --db into that variable)."""
    return _engine(resolve_db_url(None, load_config()))


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a task only for failures that a retry can fix: a lost connection, a lock or busy timeout, a
    serialization failure or deadlock (infra/warehouse/db.py `is_transient`, by SQLite's error code
    and PostgreSQL's SQLSTATE).

    A damaged file ("file is not a database"), a dropped table ("no such table"), author, data and
    provider errors are not retried: they fail the same way again and need a person (the provider
    retries live inside the channels).
    """
    exc = getattr(state, "data", None)
    return isinstance(exc, BaseException) and is_transient(exc)


# Task options for steps that read or write the warehouse.
IO_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": [2, 15], "retry_condition_fn": transient}
