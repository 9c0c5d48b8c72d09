"""Partitioned runs: extract, features, score and dispatch per shard of customers, on a Dask cluster.

A run with more than one shard (`execution.shards` in lifecycle.yaml, or `lifecycle run --shards N
[--dask ADDRESS]`) splits the customers into N customer-id ranges of equal size (quantiles computed
in SQL) and submits, per shard, `extract [shard i/N]` -> `features [shard i/N]` -> `score [shard i/N]`
as Prefect tasks through prefect-dask's DaskTaskRunner. The scored shards come back concatenated in
customer-id order: the frame a single process builds. Segment, re-entry, allocation (capacity and
budget are ranked across all customers) and reasons stay in the flow process; then
`dispatch [shard i/N]` runs per shard again (ledger keys and claims are per customer, so disjoint
shards never compete) and the results are added up. A dry run sends and writes nothing, so it
dispatches in the flow process and previews exactly what a single run would.

Workers open the warehouse and read the config themselves (`tasks.common.warehouse()`,
`load_config()`: LIFECYCLE_DB_URL / LIFECYCLE_CONFIG where they run): engines and secrets never travel.
The incremental feature state (tasks/incremental.py) is neither used nor moved forward: every shard is
read afresh.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.util
import ipaddress
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from flows.plan import Plan
from infra.errors import ConfigError, UsageError
from infra.settings import DASK_ADDRESS, ExecutionConfig, ProjectConfig, load_config
from infra.warehouse.schema import customers
from tasks.common import IO_RETRIES, warehouse
from tasks.dispatch import DispatchResult, dispatch, dispatch_frame, merge_results
from tasks.extract import Extract, Shard, day_end, extract_all, incremental_features
from tasks.features import features
from tasks.score import score

LOCAL = "local"  # `--dask` without an address: a temporary cluster on this machine
INSTALL_HINT = "install it with `pip install -c constraints.txt -e '.[dask]'` (the same on every Dask worker)"


@dataclass(frozen=True)
class Execution:
    """Where a run's per-customer steps run: one process (shards == 1) or shards on a Dask cluster."""

    shards: int = 1
    address: str | None = None  # a running Dask scheduler; None: a temporary local cluster
    workers: int = 2  # local cluster only

    @property
    def partitioned(self) -> bool:
        return self.shards > 1

    def describe(self) -> str:
        where = (f"the Dask scheduler at {self.address}" if self.address
                 else f"a local Dask cluster of {self.workers} worker processes")
        return f"{self.shards} shards on {where}"


def resolve(config: ExecutionConfig, shards: int | None = None, dask: str | None = None) -> Execution:
    """`--shards` / `--dask` (or the flow parameters of the same names) over lifecycle.yaml's `execution:`.

    `dask` is a scheduler address, or "local" for a temporary cluster on this machine; None keeps the config's.
    """
    n = config.shards if shards is None else shards
    if n < 1:
        raise UsageError(f"--shards must be at least 1, got {n}", code="L325")
    if dask is not None and n < 2:
        raise UsageError("--dask runs shards, and this run has one",
                         hint="add --shards N (2 or more), or set `execution: {shards: N}` in lifecycle.yaml",
                         code="L325")
    address = config.dask.address if dask is None else (None if dask == LOCAL else dask)
    if address is not None and not DASK_ADDRESS.match(address):
        raise UsageError(f"--dask: not a Dask scheduler address: {address!r}",
                         hint="write tcp://HOST:PORT (e.g. tcp://10.0.0.5:8786), or --dask alone for a local "
                              "cluster; put --dask after the playbook", code="L326")
    return Execution(shards=n, address=address, workers=config.dask.workers)


def check(execution: Execution) -> None:
    """What a partitioned run needs before it starts, each missing piece as one clear error."""
    if not execution.partitioned:
        return
    if importlib.util.find_spec("prefect_dask") is None:
        raise ConfigError(f"running {execution.describe()} needs prefect-dask, which is not installed",
                          hint=INSTALL_HINT, code="L211")
    if execution.address is None:
        return
    host, port = _host_port(execution.address)
    if not _loopback(host) and not _prefect_api_url():
        raise ConfigError(f"the Dask workers at {execution.address} cannot report to this process's temporary "
                          "Prefect server: PREFECT_API_URL is not set",
                          hint="run a Prefect server the workers can reach (`docker compose -f infra/compose.yaml "
                               "up -d`), then `export PREFECT_API_URL=http://HOST:4200/api` here and on the "
                               "workers", code="L213")
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"no Dask scheduler answers at {execution.address} ({exc.strerror or exc})",
                          hint="start one with `dask scheduler` and its workers with `dask worker "
                               f"{execution.address}`, or run without --dask for a local cluster",
                          code="L212") from None


def _host_port(address: str) -> tuple[str, int]:
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _prefect_api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


# ---- the shards --------------------------------------------------------------------------------

def shard_bounds(engine: Engine, as_of: dt.date, n: int) -> list[Shard]:
    """N customer-id ranges holding the same number of the as-of day's customers (one less if too few).

    NTILE over the ids in the database's own order, so the ranges agree with the `>=`/`<` filters
    extract applies; the first and last ranges are open, so no customer falls between shards.
    """
    c = customers.c
    ranked = (select(c.customer_id, func.ntile(n).over(order_by=c.customer_id).label("part"))
              .where(c.signed_up_at < day_end(as_of)).subquery())
    firsts = select(func.min(ranked.c.customer_id)).group_by(ranked.c.part).order_by(ranked.c.part)
    with engine.connect() as conn:
        cuts = list(conn.execute(firsts).scalars())[1:]
    edges = [None, *cuts, None]
    return [Shard(lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]


@task(name="extract", cache_policy=NO_CACHE, **IO_RETRIES)
def extract_shard(shard: Shard, as_of: dt.date) -> Extract:
    """One shard's inputs, read by the worker from its own warehouse connection."""
    return extract_all(warehouse(), as_of, shard=shard)


def config_fingerprint(config: ProjectConfig) -> str:
    """What dispatch reads from lifecycle.yaml (channels, control group), hashed: the run's and every
    worker's must agree. The warehouse URL may be spelt differently on each machine; no secret travels."""
    data = config.model_dump(mode="json", exclude={"source", "warehouse", "execution"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@task(name="dispatch", cache_policy=NO_CACHE, **IO_RETRIES)
def dispatch_shard(allocated: pd.DataFrame, plan: Plan, as_of: dt.date, run_id: str | None,
                   model_version: str | None, config_hash: str) -> DispatchResult:
    """Ledger and delivery for one shard's customers, with the worker's warehouse and channel config,
    which must be the run's: a worker with other channels would send through them."""
    config = load_config()
    if config_fingerprint(config) != config_hash:
        raise ConfigError(f"a Dask worker reads another project config ({config.source}) than this run",
                          hint="set LIFECYCLE_CONFIG on every Dask worker to the run's lifecycle.yaml (and the "
                               "${VARS} it names), then rerun the same playbook and as-of date: what other "
                               "shards sent is not repeated", code="L214")
    return dispatch_frame(allocated, plan, as_of, engine=warehouse(), config=config, run_id=run_id,
                          model_version=model_version, dry_run=False)


class Shards:
    """A partitioned run's Dask side: submits the per-shard tasks and remembers which shard each customer
    is in (dispatch splits the allocation the same way) and where the shards ran."""

    def __init__(self, runner: Any, execution: Execution) -> None:
        self.runner, self.execution = runner, execution
        self.bounds: list[Shard] = []
        self.owner = pd.Series(dtype="int64")  # customer_id -> shard number (0-based)
        self.placement: list[dict[str, Any]] = []  # step, shard, worker address, the worker's pid

    def _label(self, step: str, i: int) -> str:
        return f"{step} [shard {i + 1}/{len(self.bounds)}]"

    def score(self, engine: Engine, as_of: dt.date, model: Any) -> pd.DataFrame:
        """extract -> features -> score per shard on the cluster; the scored frame in customer-id order."""
        if incremental_features():
            from prefect import get_run_logger

            get_run_logger().info("%s: every shard is read afresh; the incremental feature state is neither "
                                  "used nor moved forward by a partitioned run", self.execution.describe())
        self.bounds = shard_bounds(engine, as_of, self.execution.shards)
        scored = {}
        for i, shard in enumerate(self.bounds):
            raw = self.runner.submit(extract_shard.with_options(task_run_name=self._label("extract", i)),
                                     {"shard": shard, "as_of": as_of})
            feats = self.runner.submit(features.with_options(task_run_name=self._label("features", i)),
                                       {"raw": raw})
            scored[i] = self.runner.submit(score.with_options(task_run_name=self._label("score", i)),
                                           {"features": feats, "model": model})
        parts = [f.result() for f in scored.values()]
        self._note("score", scored)
        self.owner = pd.Series(np.repeat(np.arange(len(parts)), [len(p) for p in parts]),
                               index=pd.Index(np.concatenate([p.index.to_numpy() for p in parts])), dtype="int64")
        filled = [p for p in parts if len(p)] or parts[:1]
        return filled[0] if len(filled) == 1 else pd.concat(filled)

    def dispatch(self, allocated: pd.DataFrame, plan: Plan, as_of: dt.date, *, engine: Engine,
                 config: ProjectConfig, run_id: str | None, model_version: str | None,
                 dry_run: bool) -> DispatchResult:
        """`dispatch [shard i/N]` per shard with customers to handle; the results added up.

        Every shard finishes before a failure is raised, so no shard is still sending when the step fails.
        """
        if dry_run:  # nothing to write or send: one pass here previews exactly what a single run would
            return dispatch(allocated, plan, as_of, engine=engine, config=config, run_id=run_id,
                            model_version=model_version, dry_run=True)
        shard_of = self.owner.reindex(allocated.index)
        if shard_of.isna().any():
            raise RuntimeError(f"{int(shard_of.isna().sum())} allocated customers are in no shard")
        futures, config_hash = {}, config_fingerprint(config)
        for i in range(len(self.bounds)):
            part = allocated[shard_of.to_numpy() == i]
            if len(part):
                futures[i] = self.runner.submit(
                    dispatch_shard.with_options(task_run_name=self._label("dispatch", i)),
                    {"allocated": part, "plan": plan, "as_of": as_of, "run_id": run_id,
                     "model_version": model_version, "config_hash": config_hash})
        results, errors = [], []
        for f in futures.values():
            try:
                results.append(f.result())
            except Exception as exc:  # noqa: BLE001 - raised below, once every shard has finished
                errors.append(exc)
        self._note("dispatch", futures)
        if errors:
            raise errors[0]
        return merge_results(results)

    def _note(self, step: str, futures: dict[int, Any]) -> None:
        """Where each shard's task ran (the worker holding its result) and that worker's pid: for the summary."""
        client = self.runner.client
        where = client.who_has([f.wrapped_future for f in futures.values()])
        pids = client.run(os.getpid)
        for i, f in futures.items():
            worker = (where.get(f.wrapped_future.key) or [None])[0]
            self.placement.append({"step": step, "shard": f"{i + 1}/{len(self.bounds)}",
                                   "task_run_id": str(f.task_run_id), "worker": worker, "pid": pids.get(worker)})

    def report(self) -> dict[str, Any]:
        """What the summary records about the partitioning: shards, cluster and where each step ran."""
        return {"shards": len(self.bounds), "cluster": self.execution.describe(), "placement": self.placement}


def describe_report(report: dict[str, Any]) -> str:
    """One line for the terminal: how the run was partitioned and on which worker processes it ran."""
    workers = sorted({(p["worker"], p["pid"]) for p in report["placement"] if p["worker"]}, key=str)
    ran = ", ".join(f"{w} (pid {pid})" for w, pid in workers) or "no worker (nothing to do)"
    return f"  partitioned: {report['cluster']}; the shards ran on {ran}"


@contextlib.contextmanager
def partitioned(execution: Execution) -> Iterator[Shards | None]:
    """A started Dask task runner for a partitioned run (None for a one-process run), stopped afterwards:
    a local cluster is created for the run, a scheduler at an address is only connected to."""
    if not execution.partitioned:
        yield None
        return
    check(execution)
    from prefect_dask import DaskTaskRunner

    if execution.address:
        runner = DaskTaskRunner(address=execution.address)
    else:
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": execution.workers, "processes": True,
                                                "threads_per_worker": 1, "dashboard_address": None})
    with _api_for_workers(), _flow_module_by_value(), _quiet_dask(), runner:
        yield Shards(runner, execution)


@contextlib.contextmanager
def _api_for_workers() -> Iterator[None]:
    """Without PREFECT_API_URL the flow reports to a temporary server on this machine; the task context
    sent to the workers then names it, so they report there too instead of each starting one of their own
    (about 10 s per worker, and runs missing from the flow's page)."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL, temporary_settings

    ctx = FlowRunContext.get()
    if _prefect_api_url() or ctx is None or ctx.client is None:
        yield
        return
    with temporary_settings({PREFECT_API_URL: str(ctx.client.api_url)}):
        yield


@contextlib.contextmanager
def _flow_module_by_value() -> Iterator[None]:
    """Every task carries the flow in its context. A deployment run loads the flow from its file, as the
    module `build`, which the Dask scheduler and workers cannot import: send that module's functions by
    value (what they import, flows.* and tasks.*, stays a reference to the workers' installed code)."""
    import cloudpickle
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    name = getattr(getattr(ctx.flow, "fn", None), "__module__", None) if ctx and ctx.flow else None
    module = sys.modules.get(name or "")
    if module is None or "." in name or name == "__main__":  # a package module the workers import themselves
        yield
        return
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


@contextlib.contextmanager
def _quiet_dask() -> Iterator[None]:
    """Dask's own INFO lines (workers starting and stopping, a few dozen a run) are not ops news: warnings only."""
    log = logging.getLogger("distributed")
    level = log.level
    log.setLevel(logging.WARNING)
    key = "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED"  # the local workers read it when they start
    before = os.environ.get(key)
    os.environ[key] = "warning"
    try:
        yield
    finally:
        log.setLevel(level)
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
