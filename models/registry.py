"""The model registry: trained models live in the warehouse, so every worker scores with the same one."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from infra.errors import ModelError
from infra.warehouse.schema import model_registry
from models.churn import ChurnModel


def save(engine: Engine, model: ChurnModel) -> None:
    """Register a model and make it the one runs use; retraining an identical model re-promotes it."""
    record = model.to_record()
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    t = model_registry.c
    with engine.begin() as conn:
        promoted = conn.execute(
            update(model_registry).where(t.name == record["name"], t.version == record["version"]).values(created_at=now)
        ).rowcount
        if not promoted:
            conn.execute(model_registry.insert().values(**record, created_at=now))


def latest(engine: Engine, name: str = "churn") -> ChurnModel | None:
    """The newest registered model with this name, or None."""
    t = model_registry.c
    with engine.connect() as conn:
        row = conn.execute(
            select(model_registry).where(t.name == name).order_by(t.created_at.desc(), t.model_id.desc()).limit(1)
        ).mappings().first()
    return ChurnModel.from_record(dict(row)) if row else None


def require(engine: Engine, name: str = "churn") -> ChurnModel:
    model = latest(engine, name)
    if model is None:
        raise ModelError(
            f"no trained '{name}' model in the warehouse",
            hint="run `lifecycle model train` (or `lifecycle demo`, which trains one when missing)",
            code="L501",
        )
    model.check_schema()
    return model
