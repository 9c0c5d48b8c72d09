"""What every task shares: the warehouse engine for this process and the Prefect task defaults."""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

from infra.settings import load_config, resolve_db_url
from infra.warehouse.db import open_warehouse


@functools.lru_cache(maxsize=8)
def _engine(url: str) -> Engine:
    return open_warehouse(url)


def warehouse() -> Engine:
    """The warehouse named by LIFECYCLE_DB_URL / the config (the CLI turns --db into that variable)."""
    return _engine(resolve_db_url(None, load_config()))


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a task only for failures that a retry can fix: a lost or locked database, a timeout.

    Author, data and provider errors are not retried: they need a person (the provider retries live
    inside the channels).
    """
    exc = getattr(state, "data", None)
    return isinstance(exc, (OperationalError, DisconnectionError, InterfaceError, TimeoutError, ConnectionError))


# Task options for steps that read or write the warehouse.
IO_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": [2, 15], "retry_condition_fn": transient}
