"""A partitioned run on a local Dask cluster of two worker processes (the flow loaded from its file, as a
deployment run loads it) decides and sends exactly what one process does: the same ledger rows, outbox
messages and summary counts, on SQLite and PostgreSQL. Also the pieces: balanced shards whose features
add up to the whole, merged dispatch counts, clear errors for flags, installs and worker configs."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import uuid

import pandas as pd
import pytest
from sqlalchemy import create_engine, select, text

from flows import sharded as sharding
from flows.build import run_plan
from flows.cli import main
from flows.compiler import compile_file
from flows.training import train
from infra.errors import ConfigError
from infra.settings import SHIPPED_PLAYBOOKS, load_config, outbox_dir
from infra.warehouse.db import open_warehouse, upgrade
from infra.warehouse.schema import touches
from models import registry
from tasks.extract import Shard, extract_all
from tasks.features import build_features
from tests.conftest import END, PG_REASON, REPO, flow_run_artifacts, make_world

# What a run decides; run ids, timestamps and claims differ between any two runs (and the outbox
# paths between these two, which write to homes of their own).
LEDGER = ["touch_key", "customer_id", "playbook", "playbook_version", "plan_hash", "step", "as_of", "segment",
          "tier", "channel", "template", "variant", "score", "model_version", "status", "reason", "priority",
          "due_at", "payload", "cost", "skipped"]
PER_RUN = {"flow_run_id", "flow_run_name", "execution", "offer_cost", "outboxes"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def two_warehouses(request, tmp_path):
    """Two empty warehouses of one backend: one for the single-process run, one for the sharded run."""
    if request.param == "sqlite":
        yield [f"sqlite:///{tmp_path / 'single.db'}", f"sqlite:///{tmp_path / 'sharded.db'}"]
        return
    base = os.environ.get("LIFECYCLE_TEST_PG_URL")
    if not base:
        pytest.skip(PG_REASON)
    schemas = [f"lc_dask_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    admin = create_engine(base)
    with admin.begin() as conn:
        for schema in schemas:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    yield [f"{base}{sep}options=-csearch_path%3D{schema}" for schema in schemas]
    with admin.begin() as conn:
        for schema in schemas:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def _ledger(engine) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(*(touches.c[c] for c in LEDGER)).order_by(touches.c.touch_key)).mappings()
        return [dict(r) for r in rows]


def _outbox() -> list[dict]:
    lines = [json.loads(line) for path in sorted(outbox_dir().glob("*.jsonl")) for line in path.read_text().splitlines()]
    return sorted(({k: v for k, v in m.items() if k != "written_at"} for m in lines), key=lambda m: m["touch_key"])


def _run(url, home, monkeypatch, **execution) -> dict:
    """One churn_winback run as of END against `url`, its outbox in `home`; env as the CLI sets it, which
    a local cluster's worker processes inherit. With `execution`, the flow is loaded from its file, as a
    deployment run loads it (module `build`, which the workers cannot import by name)."""
    monkeypatch.setenv("LIFECYCLE_DB_URL", url)
    monkeypatch.setenv("LIFECYCLE_HOME", str(home))
    path = SHIPPED_PLAYBOOKS / "churn_winback.yaml"
    if not execution:
        return run_plan(compile_file(path, load_config()), str(path), END, dry_run=False, model_version=None)
    from prefect.flows import load_flow_from_entrypoint

    deployed = load_flow_from_entrypoint(f"{REPO / 'flows' / 'build.py'}:playbook_flow")
    # a worker started elsewhere (`dask worker`) has no flows/ folder on its path: neither have these
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(REPO / "flows")])
    return deployed.with_options(name="churn_winback", flow_run_name=f"churn_winback-{END}")(
        playbook=str(path), as_of=END.isoformat(), **execution)


def _task_run_names(flow_run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def fetch():
        async with get_client() as client:
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    return sorted(t.name for t in asyncio.run(fetch()))


@pytest.mark.slow
def test_a_run_in_three_shards_on_two_dask_workers_equals_the_single_process_run(
        two_warehouses, tmp_path, monkeypatch, prefect_harness):
    single_url, sharded_url = two_warehouses
    engines = [make_world(url, customers=3000, seed=5) for url in two_warehouses]
    model = train(engines[0], END, 90)
    registry.save(engines[1], model)  # the same model (and version) in both

    single = _run(single_url, tmp_path / "single", monkeypatch)
    single_outbox = _outbox()
    sharded = _run(sharded_url, tmp_path / "sharded", monkeypatch, shards=3, dask="local")
    sharded_outbox = _outbox()

    # the same decisions, row for row, and the same messages delivered
    ledger = _ledger(engines[0])
    assert sum(r["status"] == "sent" for r in ledger) > 100
    assert {r["status"] for r in ledger} >= {"sent", "dropped", "held_out"}
    assert _ledger(engines[1]) == ledger
    assert sharded_outbox == single_outbox and len(single_outbox) == sum(r["status"] == "sent" for r in ledger)
    assert {k: v for k, v in sharded.items() if k not in PER_RUN} == {k: v for k, v in single.items() if k not in PER_RUN}
    assert math.isclose(sharded["offer_cost"], single["offer_cost"], rel_tol=1e-9)
    assert "execution" not in single

    # the work ran in the cluster's two worker processes, not here
    execution = sharded["execution"]
    assert execution["shards"] == 3 and execution["cluster"] == "3 shards on a local Dask cluster of 2 worker processes"
    placement = execution["placement"]
    assert sorted((p["step"], p["shard"]) for p in placement) == [(step, f"{i}/3") for step in ("dispatch", "score")
                                                                  for i in (1, 2, 3)]
    pids = {p["pid"] for p in placement}
    assert None not in pids and os.getpid() not in pids and len(pids) == 2

    # each shard's steps are task runs of the flow run, named for their shard
    names = _task_run_names(sharded["flow_run_id"])
    for step in ("extract", "features", "score", "dispatch"):
        assert [n for n in names if n.startswith(step + " [")] == [f"{step} [shard {i}/3]" for i in (1, 2, 3)]
    assert {"segment", "allocate", "reasons"} <= {n.rsplit("-", 1)[0] for n in names}
    # the run's page in the Prefect UI says where the shards ran, as the terminal does
    [page] = [a for a in flow_run_artifacts(sharded["flow_run_id"]) if a.key == "churn-winback-summary"]
    assert "- " + sharding.describe_report(execution).strip() in page.data.splitlines()


def test_shards_are_balanced_ranges_whose_features_concatenate_to_the_single_frame(sqlite_url):
    engine = make_world(sqlite_url, customers=600, seed=2)
    bounds = sharding.shard_bounds(engine, END, 4)
    parts = [extract_all(engine, END, shard=shard) for shard in bounds]
    sizes = [len(p.customers) for p in parts]
    assert len(bounds) == 4 and sum(sizes) == 600 and max(sizes) - min(sizes) <= 1
    assert bounds[0].lo is None and bounds[-1].hi is None
    assert all(a.hi == b.lo for a, b in zip(bounds, bounds[1:]))  # adjacent: nobody between two shards
    whole = build_features(extract_all(engine, END))
    pd.testing.assert_frame_equal(pd.concat([build_features(p) for p in parts]), whole)


def test_an_empty_warehouse_is_one_open_shard(sqlite_url):
    engine = open_warehouse(sqlite_url, create=True)
    upgrade(engine)
    assert sharding.shard_bounds(engine, END, 4) == [Shard(None, None)]


@pytest.mark.parametrize(("flags", "expected"), [
    (["--dask"], "error[L325]: --dask runs shards, and this run has one"),
    (["--shards", "2", "--dask", "http://h:8786"], "error[L326]: --dask: not a Dask scheduler address: 'http://h:8786'"),
    (["--shards", "2", "--dask", "tcp://127.0.0.1:1"], "error[L212]: no Dask scheduler answers at tcp://127.0.0.1:1"),
    (["--shards", "2", "--dask", "tcp://192.0.2.1:8786"], "error[L213]: the Dask workers at tcp://192.0.2.1:8786 "
                                                          "cannot report to this process's temporary Prefect server"),
])
def test_run_flags_for_shards_fail_clearly_before_anything_runs(flags, expected, capsys, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # no server, even after the session's harness
        assert main(["run", "churn_winback", *flags]) == 2
    assert expected in capsys.readouterr().err


def test_without_prefect_dask_a_sharded_run_says_how_to_install_it(capsys, monkeypatch):
    find_spec = sharding.importlib.util.find_spec
    monkeypatch.setattr(sharding.importlib.util, "find_spec",
                        lambda name, *a: None if name == "prefect_dask" else find_spec(name, *a))
    assert main(["run", "churn_winback", "--shards", "4"]) == 2
    err = capsys.readouterr().err
    assert "error[L211]: running 4 shards on a local Dask cluster of 2 worker processes needs prefect-dask" in err
    assert "pip install -c constraints.txt -e '.[dask]'" in err


def test_a_worker_with_another_channel_config_refuses_to_dispatch(tmp_path, monkeypatch):
    plan = compile_file(SHIPPED_PLAYBOOKS / "churn_winback.yaml", load_config())
    ours = sharding.config_fingerprint(load_config())
    other = tmp_path / "lifecycle.yaml"
    other.write_text("channels:\n  sms:\n    type: webhook\n    url: http://10.0.0.9/send\n")
    monkeypatch.setenv("LIFECYCLE_CONFIG", str(other))  # what a worker started without the run's config reads
    with pytest.raises(ConfigError) as err:
        sharding.dispatch_shard.fn(pd.DataFrame(), plan, END, None, None, ours)
    assert err.value.code == "L214" and f"reads another project config ({other})" in err.value.message
    assert sharding.config_fingerprint(load_config()) != ours
