"""The touch ledger's claim protocol: exactly-once delivery across crashes and concurrent runs.

1. `insert_absent` writes the run's decisions as ledger rows; a key already there (an earlier or a
   concurrent run) is left alone: INSERT ... ON CONFLICT DO NOTHING (after a COPY) / INSERT OR IGNORE.
2. `Claimer` registers this delivering process as a claimant (host, pid, start time, Prefect flow run)
   and `claim`s batches of `planned` keys with one conditional UPDATE: only rows nobody holds, or whose
   holder's lease ran out, change hands. The database serialises the two UPDATEs of a row, so two
   concurrent runs can never both own, and both deliver, the same key. A key held by a claimant that is
   known to be gone (its process is not alive on this host, or its flow run crashed, failed or was
   cancelled) is taken over at once, with a conditional UPDATE on the dead token, not after the lease.
3. `finish` marks what the channel delivered `sent`, what it refused `failed` (with the provider's
   message) and releases what it could not deliver, so the rerun takes it at once; it is retried when
   the database hiccups, because what it records has already happened.
4. `Claimer.close` releases whatever this process still holds (an exception or an interrupt broke the
   delivery off) and forgets the claimant. Only a killed process leaves claims behind.

A key is sent again only when its run died between handing it to the channel and `finish`: the
requests in flight. LIFECYCLE_CLAIM_LEASE_SECONDS (default 600) is how long the claim of a run whose
state cannot be known (another host, no Prefect server) holds; keep it above one batch's delivery.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import pandas as pd
from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Engine
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from infra.faults import crash_point
from infra.warehouse.bulk import among, chunks, insert_ignore, utcnow
from infra.warehouse.db import is_transient
from infra.warehouse.schema import claimants, touches

if TYPE_CHECKING:
    from tasks.channels import Delivery

CHUNK = 2_000
DEFAULT_LEASE_SECONDS = 600
FORGET_AFTER = dt.timedelta(days=30)  # claimant rows older than this are long past any lease
FINISH_PATIENCE = 60.0  # seconds `finish` keeps retrying a database that went away
OVER = {"CRASHED", "FAILED", "CANCELLED", "COMPLETED"}  # flow run states after which it delivers nothing
log = logging.getLogger("lifecycle.dispatch")


def lease() -> dt.timedelta:
    return dt.timedelta(seconds=float(os.environ.get("LIFECYCLE_CLAIM_LEASE_SECONDS", DEFAULT_LEASE_SECONDS)))


def new_token() -> str:
    """A claim id: unique per delivery, so a rerun never mistakes a dead run's claims for its own."""
    return uuid.uuid4().hex


def insert_absent(engine: Engine, ledger: pd.DataFrame, run: Mapping[str, object] | None = None) -> None:
    """Insert ledger rows whose touch_key is not there yet; existing rows win (the primary key decides).
    `run`: the columns every row of this run shares (playbook, day, plan, run id, timestamps)."""
    with engine.begin() as conn:
        insert_ignore(conn, touches, ledger, ["touch_key"], constants=run)
        crash_point("ledger write")


# ---- who is claiming -------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def host_identity() -> str:
    """Where a pid means something: the host name, the kernel's boot id and the pid namespace (containers
    on one kernel share the boot id but not the namespace, so their pids are never compared)."""
    parts = [socket.gethostname()]
    for path, read in (("/proc/sys/kernel/random/boot_id", lambda p: open(p).read().strip()),
                       ("/proc/self/ns/pid", os.readlink)):
        try:
            parts.append(read(path))
        except OSError:
            parts.append("?")
    return "|".join(parts)[:255]


def process_started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, Linux), or None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[19] if len(fields) > 19 else None


def _alive_here(pid: int, started: str | None) -> bool:
    """Whether the process that claimed is still running on this host (not a new one with its pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process, but it exists
    now = process_started(pid)
    return started is None or now is None or now == started


def _flow_run_over(flow_run_id: str | None) -> bool:
    """Whether Prefect knows the claimant's flow run is over (crashed, failed, cancelled, completed).

    Asked only from inside a flow run, whose API is up; anything else (no server, an unknown run, an
    error) counts as not known, and the claim waits for its lease."""
    if not flow_run_id:
        return False
    try:  # Prefect only when a flow run is in progress here; the claim protocol works without it
        from prefect.client.orchestration import get_client
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is None:
            return False
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(uuid.UUID(flow_run_id))
        return run.state is not None and run.state.type.value in OVER
    except Exception:  # noqa: BLE001 - a state we cannot read is a state we do not know
        log.debug("flow run %s: state unknown", flow_run_id, exc_info=True)
        return False


def _current_flow_run() -> str | None:
    try:  # the Prefect flow run this process delivers for, if any
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        return str(ctx.flow_run.id) if ctx is not None and ctx.flow_run is not None else None
    except Exception:  # noqa: BLE001 - outside Prefect there is none
        return None


@dataclass
class Holder:
    """A claimant still holding keys this run wanted: a live run, or one whose state is not known."""

    token: str
    keys: int
    host: str | None = None  # None: no claimant row (a run from before claimants were recorded)
    pid: int | None = None
    claimed_at: dt.datetime | None = None
    started: str | None = None
    flow_run_id: str | None = None

    def describe(self, here: str) -> str:
        if self.host is None:
            return "a run that left no trace of itself"
        where = "this host" if self.host == here else f"host {self.host.split('|')[0]}"
        return f"process {self.pid} on {where}"


@dataclass
class Claimed:
    """One claim: the keys this run now owns, how many it took over from gone runs, and who holds the rest."""

    mine: set[str] = field(default_factory=set)
    taken_over: int = 0
    held: list[Holder] = field(default_factory=list)


class Claimer:
    """This process's claims for one delivery: registered as a claimant, released when it closes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.token = new_token()
        self.host = host_identity()
        now = utcnow()
        with engine.begin() as conn:
            conn.execute(delete(claimants).where(claimants.c.created_at < now - FORGET_AFTER))
            conn.execute(insert(claimants).values(
                token=self.token, host=self.host, pid=os.getpid(), started=process_started(os.getpid()),
                flow_run_id=_current_flow_run(), created_at=now))

    def claim(self, keys: Sequence[str]) -> Claimed:
        """Take the `planned` keys nobody holds, whose lease expired or whose claimant is gone."""
        out = Claimed()
        now = utcnow()
        t = touches.c
        with self.engine.begin() as conn:
            for part in chunks(list(keys), CHUNK):
                chunk = list(part)
                conn.execute(update(touches).where(
                    among(t.touch_key, chunk), t.status == "planned",
                    or_(t.claimed_by.is_(None), t.claimed_by == self.token, t.claimed_at < now - lease()),
                ).values(claimed_by=self.token, claimed_at=now))
                others = conn.execute(
                    select(t.claimed_by, func.count(), func.min(t.claimed_at))
                    .where(among(t.touch_key, chunk), t.status == "planned", t.claimed_by != self.token)
                    .group_by(t.claimed_by)).all()
                for holder in self._holders(conn, others):
                    if holder.host is not None and self._gone(holder):
                        taken = conn.execute(update(touches).where(
                            among(t.touch_key, chunk), t.status == "planned", t.claimed_by == holder.token,
                        ).values(claimed_by=self.token, claimed_at=now)).rowcount
                        out.taken_over += taken
                        holder.keys -= taken
                    if holder.keys > 0:
                        out.held.append(holder)
                out.mine.update(conn.execute(select(t.touch_key).where(
                    among(t.touch_key, chunk), t.claimed_by == self.token, t.status == "planned")).scalars())
        if out.taken_over:
            log.warning("took over %d planned touches whose run is gone (killed or crashed); any that run had "
                        "already handed to the provider go out again, with the same touch key", out.taken_over)
        return out

    def _holders(self, conn, others) -> list[Holder]:
        tokens = [tok for tok, _, _ in others]
        rows = {r.token: r for r in conn.execute(select(claimants).where(among(claimants.c.token, tokens)))} if tokens else {}
        holders = []
        for tok, n, at in others:
            row = rows.get(tok)
            holders.append(Holder(tok, int(n), claimed_at=at) if row is None else
                           Holder(tok, int(n), row.host, row.pid, at, row.started, row.flow_run_id))
        return holders

    def _gone(self, holder: Holder) -> bool:
        if holder.host == self.host and holder.pid is not None:
            return not _alive_here(holder.pid, holder.started)
        return _flow_run_over(holder.flow_run_id)

    def close(self) -> None:
        """Release every planned key this process still holds and forget it as a claimant.

        Called whatever happened: after an exception or interrupt, the keys it was delivering go back to
        the ledger at once (those already handed to the provider may go out again on the rerun; a
        provider that honours the touch key drops them)."""
        t = touches.c
        with self.engine.begin() as conn:
            released = conn.execute(update(touches).where(t.claimed_by == self.token, t.status == "planned")
                                    .values(claimed_by=None, claimed_at=None, updated_at=utcnow())).rowcount
            conn.execute(delete(claimants).where(claimants.c.token == self.token))
        if released:
            log.warning("released %d planned touches this run could not finish; a rerun delivers them", released)


class Marker:
    """While a channel sends a batch, marks what it has delivered `sent` every FLUSH_SECONDS, so a process
    killed mid-batch repeats only the last moments' deliveries and the requests in flight, not the batch.
    When the ledger cannot be written the channel is stopped (a run that cannot record what it sends
    must not go on sending); `finish` records the rest when the batch is done."""

    FLUSH_SECONDS = 0.5

    def __init__(self, engine: Engine, token: str, delivery: Delivery) -> None:
        self.engine, self.token, self.delivery = engine, token, delivery
        self.done = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="ledger-marker", daemon=True)

    def __enter__(self) -> Marker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()
        self._flush()  # the batch's last deliveries, before anything else can happen to this process

    def _loop(self) -> None:
        while not self.stopped.wait(self.FLUSH_SECONDS):
            self._flush()

    def _flush(self) -> None:
        sent = self.delivery.sent[self.done:]  # the channel only appends
        if not sent:
            return
        try:
            mark_sent(self.engine, self.token, sent)
            self.done += len(sent)
        except Exception as exc:  # noqa: BLE001 - sending on unrecorded would risk a batch of repeats
            log.warning("the ledger cannot be written (%s): the channel stops; `finish` records what it can",
                        type(exc).__name__)
            self.delivery.stop(f"the warehouse stopped answering ({type(exc).__name__}), so deliveries "
                               "cannot be recorded", "L606")


def mark_sent(engine: Engine, token: str, keys: Sequence[str]) -> None:
    """Mark delivered keys this token holds `sent` (keys already marked are left as they are)."""
    t = touches.c
    now = utcnow()
    with engine.begin() as conn:
        for part in chunks(list(keys), CHUNK):
            conn.execute(update(touches).where(among(t.touch_key, part), t.claimed_by == token, t.status == "planned")
                         .values(status="sent", updated_at=now))


def finish(engine: Engine, token: str, delivery: Delivery) -> None:
    """Record a batch's outcome: sent, failed with the provider's reason, or released for the rerun.

    What it records has already happened at the provider, so a lost connection or a locked database
    is retried for up to FINISH_PATIENCE seconds before the error is raised."""
    for attempt in Retrying(stop=stop_after_delay(FINISH_PATIENCE), wait=wait_exponential(0.2, max=5),
                            retry=retry_if_exception(is_transient), reraise=True):
        with attempt:
            _finish(engine, token, delivery)


def _finish(engine: Engine, token: str, delivery: Delivery) -> None:
    now = utcnow()
    t = touches.c
    mine = and_(t.claimed_by == token, t.status == "planned")
    with engine.begin() as conn:
        for part in chunks(delivery.sent, CHUNK):
            conn.execute(update(touches).where(among(t.touch_key, part), mine)
                         .values(status="sent", updated_at=now))
        crash_point("marking")
        by_reason: dict[str, list[str]] = {}
        for key, why in delivery.failed.items():
            by_reason.setdefault(why[:128], []).append(key)
        for why, keys in by_reason.items():
            for part in chunks(keys, CHUNK):
                conn.execute(update(touches).where(among(t.touch_key, part), mine)
                             .values(status="failed", reason=why, updated_at=now))
        for part in chunks(delivery.undelivered, CHUNK):
            conn.execute(update(touches).where(among(t.touch_key, part), mine)
                         .values(claimed_by=None, claimed_at=None, updated_at=now))
