"""The KPI flow: `lifecycle kpis` as a Prefect flow, meant to run weekly, its charts attached to the run.

Artifacts on the flow-run page (counts and rates only, never a customer): `kpis-summary` (markdown:
the headline, both charts inlined as PNG data: URIs of about 20 KB each, the month and cohort tables
and where the full HTML report is), `kpis-monthly` and `kpis-cohorts` (tables). The report files go to
`out` (default $LIFECYCLE_HOME/reports/kpis/<last day>).

For the deploy helper: ENTRYPOINT, and SCHEDULE (Mondays 08:00, in the shipped playbooks' timezone);
the warehouse comes from the worker's LIFECYCLE_DB_URL / LIFECYCLE_CONFIG, as for playbook runs.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.kpicmd import markdown, write_report
from infra.settings import lifecycle_home
from tasks.common import warehouse
from tasks.kpis import kpis

ENTRYPOINT = "flows/kpiflow.py:kpi_flow"
NAME = "kpis"
SCHEDULE = {"cron": "0 8 * * 1", "timezone": "Asia/Shanghai"}  # Mondays 08:00, before the week's planning


def _run_name() -> str:
    from prefect.runtime import flow_run

    return f"kpis-{flow_run.parameters.get('end') or dt.datetime.now(dt.UTC).date().isoformat()}"


@flow(name=NAME, flow_run_name=_run_name, persist_result=False, validate_parameters=False)
def kpi_flow(start: str | None = None, end: str | None = None, out: str | None = None) -> dict[str, Any]:
    """KPIs for the months from `start` to `end` (default: the 12 months up to the last full day of orders)."""
    engine = warehouse()
    result = kpis(engine, dt.date.fromisoformat(start) if start else None, dt.date.fromisoformat(end) if end else None)
    folder = Path(out) if out else lifecycle_home() / "reports" / "kpis" / result.end.isoformat()
    paths = write_report(result, folder)
    create_markdown_artifact(key="kpis-summary", markdown=markdown(result, paths),
                             description=f"customer KPIs {result.start} to {result.end}")
    create_table_artifact(key="kpis-monthly", table=result.to_json()["monthly"],
                          description="active customers, orders, revenue and AOV by month")
    create_table_artifact(key="kpis-cohorts", table=result.to_json()["cohorts"],
                          description="funnel, repurchase and AOV by monthly sign-up cohort")
    from prefect.runtime import flow_run

    return {"from": result.start.isoformat(), "to": result.end.isoformat(), "totals": result.to_json()["totals"],
            "report": str(paths["html"]), "flow_run_id": str(flow_run.id)}
