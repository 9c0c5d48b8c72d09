"""What every task shares: the warehouse engine for this process and the Prefect task defaults."""

from __future__ import annotations

import functools

from sqlalchemy.engine import Engine

from infra.settings import load_config, resolve_db_url
from infra.warehouse.db import open_warehouse


@functools.lru_cache(maxsize=8)
def _engine(url: str) -> Engine:
    return open_warehouse(url)


def warehouse() -> Engine:
    """The warehouse named by LIFECYCLE_DB_URL / the config (the CLI turns --db into that variable)."""
    return _engine(resolve_db_url(None, load_config()))
