"""`lifecycle db status` and `lifecycle ui` as a user meets them: every table counted, the UI where it says it is."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from infra.warehouse import schema
from tests.conftest import make_world
from tests.flows.test_cli import LIFECYCLE, cli


def test_db_status_lists_every_table_of_the_schema_with_its_row_count(sqlite_url):
    make_world(sqlite_url, customers=300, seed=2)
    r = cli("db", "status", "--db", sqlite_url)
    assert r.returncode == 0, r.stdout + r.stderr
    counts = {}
    for line in r.stdout.splitlines()[2:]:
        name, n = line.split()
        counts[name] = int(n.replace(",", ""))
    assert list(counts) == list(schema.metadata.tables), r.stdout  # journeys, claimants, suppressions, ... too
    assert counts["customers"] == 300 and counts["suppressions"] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ui_serves_on_the_port_it_was_given_and_its_page_calls_the_api_there(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.Popen([LIFECYCLE, "ui", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == f"Prefect UI on http://127.0.0.1:{port} (Ctrl-C to stop)"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read()
            with contextlib.suppress(OSError):
                settings = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings", timeout=2))
                break
            assert time.monotonic() < deadline, "the UI did not answer within 180 s"
            time.sleep(0.5)
        # the page in the browser reads its runs from here: at :4200 it would show another server's, or nothing
        assert settings["api_url"] == f"http://127.0.0.1:{port}/api"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()


def test_ui_refuses_a_port_that_is_not_one():
    r = cli("ui", "--port", "70000")
    assert r.returncode == 2 and "a port is 1 to 65535, got 70000" in r.stderr
