"""Where trained models live: the warehouse's `model_registry` table, and versioned folders on disk.

Both hold the same artifact: the booster text (`model.txt`) and one JSON document (`model.json`:
feature names and dtypes, horizon, cutoffs and training window, data fingerprint, metrics, BG/NBD
parameters, calibration, drift reference, library versions). On disk, `DIR/<version>/` holds the
two files and `DIR/LATEST` names the newest version, so `--model DIR` and `--model DIR/<version>`
both work.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from infra.errors import ModelError
from infra.warehouse.bulk import utcnow
from infra.warehouse.schema import model_registry
from models.churn import ChurnModel


def save(engine: Engine, model: ChurnModel) -> None:
    """Register a model and make it the one runs use; retraining an identical model re-promotes it."""
    record = model.to_record()
    now = utcnow()
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


def by_version(engine: Engine, version: str, name: str = "churn") -> ChurnModel | None:
    """A registered model by its version (what a ledger row names), or None when it is not registered."""
    t = model_registry.c
    with engine.connect() as conn:
        row = conn.execute(select(model_registry).where(t.name == name, t.version == version)).mappings().first()
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


def trained_after(model: ChurnModel | None, as_of: dt.date) -> str | None:
    """Why `model` should not score `as_of` unremarked: it learned from data after that day (a backfill or
    replay with today's model has seen what came later), or None. A warning, not a refusal: a replay with
    the model of the time is what to do, and the message says how."""
    if model is None or model.as_of <= as_of:
        return None
    return (f"model {model.version} learned from data up to {model.as_of}, after this run's day {as_of}: its "
            f"scores for {as_of} have seen what came later. For a fair run of a past day, train a model as of "
            f"that day first (`lifecycle model train --as-of {as_of}`; runs use the newest model trained, so "
            "train again without --as-of for today's runs)")


def save_dir(model: ChurnModel, root: Path | str) -> Path:
    """Write `root/<version>/model.txt` and `model.json`, and point `root/LATEST` at it."""
    root = Path(root)
    record = model.to_record()
    folder = root / record["version"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.txt").write_text(record["booster"])
    document = {"name": record["name"], "version": record["version"], "as_of": record["as_of"].isoformat(),
                "horizon_days": record["horizon_days"], "meta": json.loads(record["meta"])}
    (folder / "model.json").write_text(json.dumps(document, indent=1, sort_keys=True, default=str) + "\n")
    (root / "LATEST").write_text(record["version"] + "\n")
    return folder


def load_dir(path: Path | str) -> ChurnModel:
    """A model from `DIR/<version>` (holding model.json) or from `DIR` (its LATEST version)."""
    path = Path(path)
    folder = path
    if not (path / "model.json").is_file() and (path / "LATEST").is_file():
        folder = path / (path / "LATEST").read_text().strip()
    if not (folder / "model.json").is_file() or not (folder / "model.txt").is_file():
        raise ModelError(f"no model artifact at {path} (expected model.json and model.txt, or a LATEST file)",
                         hint="train one with `lifecycle model train --out DIR`", code="L508")
    document = json.loads((folder / "model.json").read_text())
    record = {"name": document["name"], "version": document["version"], "as_of": document["as_of"],
              "horizon_days": document["horizon_days"], "meta": json.dumps(document["meta"]),
              "booster": (folder / "model.txt").read_text()}
    return ChurnModel.from_record(record)
