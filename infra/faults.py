"""Crash injection for the fault-injection tests: `crash_point(name)` kills this process (SIGKILL, no
cleanup) the n-th time `name` is reached when LIFECYCLE_TEST_CRASH_AT is `name:n`; `name:n:TERM` sends
SIGTERM instead (what a worker's cancellation or `kill` sends: the run may clean up).

The points sit where a kill would hurt most: while the ledger is written, between a claim and the send,
in the middle of a batch, while it is marked, while journeys are entered and while the feature state is
saved (tests/tasks/test_faults.py kills runs there and checks the rerun). Unset, a point costs a dict
lookup; nothing in a normal run sets the variable.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "LIFECYCLE_TEST_CRASH_AT"
POINTS = ("ledger write", "ledger written", "claimed", "sending", "delivered", "marking", "marked", "journeys entry",
          "feature state")
_seen: dict[str, int] = {}


def crash_point(name: str) -> None:
    """SIGKILL this process here if the test asked for it (see the module docstring)."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    how = signal.SIGKILL
    if spec.endswith(":TERM"):
        spec, how = spec[: -len(":TERM")], signal.SIGTERM
    point, sep, nth = spec.rpartition(":")
    if not sep or not nth.isdigit():
        point, nth = spec, "1"
    if point != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth):
        os.kill(os.getpid(), how)
