"""`lifecycle check` over 50 playbooks against one flow run of churn_winback, measured in the same run.

    .venv/bin/python tests/benchmarks/check_bench.py [--playbooks 50] [--customers 2000]

Writes 50 playbooks (variations of the shipped ones: other thresholds, names and guardrails) into a
temporary folder and checks them in-process as `lifecycle check` does; then generates a small demo
world, trains the model and runs churn_winback once as a Prefect flow (ephemeral server, dry run:
the same steps, nothing delivered). The ratio says how much of one run the compiler would cost:
it must be a small fraction, so the compiler is never the bottleneck.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from flows.compiler import compile_file  # noqa: E402
from infra.settings import SHIPPED_PLAYBOOKS, load_config  # noqa: E402

END = dt.date(2026, 6, 30)


def write_playbooks(folder: Path, count: int) -> list[Path]:
    """`count` valid playbooks: the shipped ones renamed, with shifted thresholds and priorities."""
    (folder / "templates").symlink_to(SHIPPED_PLAYBOOKS / "templates")
    sources = sorted(SHIPPED_PLAYBOOKS.glob("*.yaml"))
    paths = []
    for i in range(count):
        src = sources[i % len(sources)]
        name = f"{src.stem}_{i:02d}"
        text = re.sub(r"^name: .*$", f"name: {name}", src.read_text(), flags=re.M)
        text = text.replace(">= 1500", f">= {1500 + i}").replace("priority: ", f"priority: {i % 40} #")
        path = folder / f"{name}.yaml"
        path.write_text(text)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--playbooks", type=int, default=50)
    parser.add_argument("--customers", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        os.environ["LIFECYCLE_HOME"] = str(tmp_path / "home")
        os.environ["PREFECT_HOME"] = str(tmp_path / "prefect")
        config = load_config()
        (tmp_path / "playbooks_dir").mkdir()
        paths = write_playbooks(tmp_path / "playbooks_dir", args.playbooks)
        compile_file(paths[0], config)  # imports warmed, as in a long-lived process
        started = time.perf_counter()
        plans = [compile_file(p, config) for p in paths]
        check_s = time.perf_counter() - started
        print(f"check:  {len(plans)} playbooks in {check_s * 1000:.0f} ms ({check_s / len(plans) * 1000:.1f} ms each)")

        from flows.build import run_plan
        from flows.training import train
        from infra.demoworld import generate_world, write_world
        from infra.warehouse.db import open_warehouse, upgrade

        url = f"sqlite:///{tmp_path / 'w.db'}"
        os.environ["LIFECYCLE_DB_URL"] = url
        engine = open_warehouse(url, create=True)
        upgrade(engine)
        write_world(engine, generate_world(args.customers, days=730, seed=3, end=END))
        model = train(engine, END, 90)
        path = SHIPPED_PLAYBOOKS / "churn_winback.yaml"
        plan = compile_file(path, config)
        run_plan(plan, str(path), END, dry_run=True, model_version=model.version)  # server start-up, once
        started = time.perf_counter()
        run_plan(plan, str(path), END, dry_run=True, model_version=model.version)
        run_s = time.perf_counter() - started
        print(f"run:    churn_winback on {args.customers:,} customers, one Prefect flow run in {run_s * 1000:.0f} ms")
        print(f"ratio:  checking {len(plans)} playbooks costs {check_s / run_s:.1%} of one flow run")


if __name__ == "__main__":
    main()
