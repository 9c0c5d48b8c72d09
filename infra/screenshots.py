"""Refresh the README's Prefect UI screenshots: docs/flow-run.png, docs/artifact.png, docs/segments.png,
docs/sharded-run.png.

Starts a throwaway Prefect server (its own PREFECT_HOME, analytics off), runs `lifecycle demo` against
it into a throwaway warehouse, then photographs the churn_winback flow-run page, its summary artifact
and its segments table with headless Chromium; then runs churn_winback for the next day in 3 shards on
a local Dask cluster (`--shards 3 --dask`) and photographs that run's page. Needs `chromium` (Debian:
`apt-get install chromium`). `--all DIR` also photographs every artifact of every run into DIR, to
look at them as ops would.

    .venv/bin/python infra/screenshots.py [--customers 5000] [--out docs] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLAYBOOK = "churn_winback"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--virtual-time-budget=15000"]
SIZE = (1400, 1000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LIFECYCLE_"))}
    env.update(PREFECT_HOME=str(tmp / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               LIFECYCLE_HOME=str(tmp / "home"), **extra)
    return env


@contextlib.contextmanager
def _server(tmp: Path, port: int):
    """A Prefect server with the UI on 127.0.0.1:port, stopped (its whole process group) on exit."""
    log = (tmp / "server.log").open("wb")
    prefect = str(Path(sys.executable).with_name("prefect"))
    env = _env(tmp, PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp / 'prefect.db'}",
               PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api")  # the UI in the browser calls this
    proc = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"prefect server exited; see {tmp / 'server.log'}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            if time.monotonic() > deadline:
                raise SystemExit("prefect server did not start within 180 s")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _ids(api: str) -> tuple[str, dict[str, str], str]:
    """The newest churn_winback flow run, its artifacts' ids by kind (summary, segments, ...) and its as-of date."""
    from prefect import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                                FlowRunFilterName)
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=f"{PLAYBOOK}-")),
                                     sort=FlowRunSort.START_TIME_DESC, limit=1)
        if not runs:
            raise SystemExit(f"no {PLAYBOOK} run on the server")
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[runs[0].id])))
        kinds = {(a.key or "").rsplit("-", 1)[-1]: str(a.id) for a in arts if a.key}
        if "summary" not in kinds:
            raise SystemExit(f"run {runs[0].name} has no summary artifact")
        return str(runs[0].id), kinds, str(runs[0].parameters.get("as_of"))


def _every_artifact(api: str) -> list[tuple[str, str]]:
    """(file name, artifact id) for every artifact on the server: FLOW-RUN-NAME.KEY."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        names = {str(r.id): r.name for r in client.read_flow_runs(limit=200)}
        arts: list = []
        while True:  # the API gives 200 a page at most
            page = client.read_artifacts(limit=200, offset=len(arts))
            arts += page
            if len(page) < 200:
                break
        return [(f"{names.get(str(a.flow_run_id), 'no-run')}.{a.key or a.id}", str(a.id)) for a in arts]


def _shoot(chromium: str, url: str, out: Path, tmp: Path, size: tuple[int, int] = SIZE) -> None:
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp)
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--window-size={size[0]},{size[1]}", f"--user-data-dir={profile}",
                    f"--screenshot={out}", url], check=True, capture_output=True, timeout=120)
    print(f"{out}: {url} ({out.stat().st_size:,} bytes)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (server log, warehouse)")
    ap.add_argument("--all", type=Path, metavar="DIR", help="also photograph every artifact of every run into DIR")
    args = ap.parse_args(argv)
    if not Path(args.chromium).exists():
        raise SystemExit(f"chromium not found at {args.chromium}; install it (apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="lifecycle-shots-"))
    try:
        port = _free_port()
        with _server(tmp, port) as ui:
            lifecycle = str(Path(sys.executable).with_name("lifecycle"))
            subprocess.run([lifecycle, "demo", "--customers", str(args.customers)], cwd=REPO, check=True,
                           env=_env(tmp, PREFECT_API_URL=f"{ui}/api"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            run_id, artifacts, as_of = _ids(f"{ui}/api")
            _shoot(args.chromium, f"{ui}/runs/flow-run/{run_id}", args.out / "flow-run.png", tmp)
            _shoot(args.chromium, f"{ui}/artifacts/artifact/{artifacts['summary']}", args.out / "artifact.png", tmp)
            _shoot(args.chromium, f"{ui}/artifacts/artifact/{artifacts['segments']}", args.out / "segments.png", tmp,
                   (1400, 700))
            next_day = (dt.date.fromisoformat(as_of) + dt.timedelta(days=1)).isoformat()
            subprocess.run([lifecycle, "run", PLAYBOOK, "--as-of", next_day, "--shards", "3", "--dask"], cwd=REPO,
                           check=True, env=_env(tmp, PREFECT_API_URL=f"{ui}/api"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            sharded_id, _, _ = _ids(f"{ui}/api")
            _shoot(args.chromium, f"{ui}/runs/flow-run/{sharded_id}", args.out / "sharded-run.png", tmp)
            if args.all:  # the other flows' pages too: a run whose window has ended (effect), deliver, relay, KPIs
                later = (dt.date.fromisoformat(as_of) + dt.timedelta(days=15)).isoformat()
                for cmd in ([lifecycle, "run", PLAYBOOK, "--as-of", later], [lifecycle, "deliver"],
                            [lifecycle, "events", "relay", "--mode", "run"],
                            [sys.executable, "-c", "from flows.kpiflow import kpi_flow; kpi_flow()"]):
                    subprocess.run(cmd, cwd=REPO, check=True, env=_env(tmp, PREFECT_API_URL=f"{ui}/api"),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                args.all.mkdir(parents=True, exist_ok=True)
                for name, artifact_id in _every_artifact(f"{ui}/api"):
                    _shoot(args.chromium, f"{ui}/artifacts/artifact/{artifact_id}", args.all / f"{name}.png", tmp,
                           (1400, 1400))
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
