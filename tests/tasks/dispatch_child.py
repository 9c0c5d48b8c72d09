"""A dispatching process for crash-injection and concurrency tests: `python -m tests.tasks.dispatch_child`.

Arguments: warehouse URL, playbook file, customers, batch size, and optionally a file to wait for
before dispatching (so two processes start together; "ready" on stdout says it is waiting, "done" that it dispatched). Every
customer consents to push.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import pandas as pd

AS_OF = dt.date(2026, 5, 1)


def customers(n: int) -> pd.DataFrame:
    ids = [f"c{i:05d}" for i in range(n)]
    return pd.DataFrame({"segment": "rest", "monetary_365d": 0.0, "first_name": None, "churn_score": None,
                         "churn_reasons": None}, index=pd.Index(ids, name="customer_id"))


def main(url: str, playbook: str, n: int, batch: int, go: str | None = None) -> None:
    from flows.compiler import compile_file
    from infra.settings import load_config
    from infra.warehouse.db import open_warehouse
    from tasks import dispatch
    from tasks.allocate import choose_tiers

    config = load_config()
    plan = compile_file(Path(playbook), config)
    frame = customers(n)
    allocated = choose_tiers(frame, plan, {(c, "push", "marketing") for c in frame.index})
    engine = open_warehouse(url)
    dispatch.BATCH = batch
    if go:
        print("ready", flush=True)
    while go and not Path(go).exists():
        time.sleep(0.01)
    dispatch.dispatch_frame(allocated, plan, AS_OF, engine=engine, config=config, run_id="child",
                            model_version=None, dry_run=False)
    if go:
        print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else None)
