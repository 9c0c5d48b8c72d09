"""The KPI flow: `lifecycle kpis` as a Prefect flow, meant to run weekly, its charts attached to the run.

Artifacts on the flow-run page (counts and rates only, never a customer): `kpis-summary` (markdown:
the headline, both charts inlined as PNG data: URIs of about 20 KB each, the month and cohort tables
and where the full HTML report is), `kpis-monthly` and `kpis-cohorts` (tables, their cells formatted as a
person reads them: counts beside their rates, separators, readable headers). The report files go to
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

from flows.artifacts import NONE, count, money, pct, uniform
from flows.kpicmd import markdown, write_report
from infra.settings import lifecycle_home
from tasks.common import warehouse
from tasks.kpis import kpis, partial_label

ENTRYPOINT = "flows/kpiflow.py:kpi_flow"
NAME = "kpis"
SCHEDULE = {"cron": "0 8 * * 1", "timezone": "Asia/Shanghai"}  # Mondays 08:00, before the week's planning


def _run_name() -> str:
    from prefect.runtime import flow_run

    return f"kpis-{flow_run.parameters.get('end') or dt.datetime.now(dt.UTC).date().isoformat()}"


LABELS = {"signups": "signed up", "signed_up": "signed up", "new_buyers": "new buyers", "active_90d": "active (90 days)",
          "first_order": "1st order", "second_order": "2nd order", "third_plus": "3rd+ order", "aov": "AOV",
          "repurchase_30d": "2nd in 30 days"}
PERIOD_FIELDS = {"days", "days_in_month", "complete", "age_days", "settled"}  # said by the month's label instead
RATES = {"first_order": "first_order_rate", "second_order": "repeat_rate", "third_plus": "third_plus_rate",
         "repurchase_30d": "repurchase_30d_rate"}  # a count and the rate shown beside it


def table_rows(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    """KPI records as a table a person reads: a count beside its rate ("189 (76.2%)"), money and counts with
    separators, readable headers, the same columns in every row. Keys this does not know are kept."""
    shown = {rate for rate in RATES.values()} | {"repurchase_30d_eligible"} | PERIOD_FIELDS
    rows = []
    for r in records:
        row = {}
        for k, v in r.items():
            if k in shown:
                continue
            if k in ("month", "cohort"):  # "2026-12 (7 of 31 days)", "2026-10 (maturing)": what the flags say
                row[LABELS.get(k, k)] = partial_label(r, k)
                continue
            if k == "repurchase_30d":  # of the buyers whose first order is old enough to tell
                eligible = r.get("repurchase_30d_eligible")
                cell = f"{pct(r.get('repurchase_30d_rate'))} of {count(eligible)}" if eligible else NONE
            elif k in RATES and RATES[k] in r:
                cell = count(v) if r[RATES[k]] is None else f"{count(v)} ({pct(r[RATES[k]])})"
            elif k == "revenue":
                cell = NONE if v is None else f"{v:,.0f}"
            elif k == "aov":
                cell = money(v)
            elif k.endswith("_rate"):
                cell = pct(v)
            elif isinstance(v, bool) or not isinstance(v, (int, float)):
                cell = NONE if v is None else str(v)
            else:
                cell = count(v) if float(v).is_integer() else f"{v:,}"
            row[LABELS.get(k, k.replace("_", " "))] = cell
        rows.append(row)
    return uniform(rows)


@flow(name=NAME, flow_run_name=_run_name, persist_result=False, validate_parameters=False)
def kpi_flow(start: str | None = None, end: str | None = None, out: str | None = None) -> dict[str, Any]:
    """KPIs for the months from `start` to `end` (default: the 12 months up to the last full day of orders)."""
    engine = warehouse()
    result = kpis(engine, dt.date.fromisoformat(start) if start else None, dt.date.fromisoformat(end) if end else None)
    folder = Path(out) if out else lifecycle_home() / "reports" / "kpis" / result.end.isoformat()
    paths = write_report(result, folder)
    create_markdown_artifact(key="kpis-summary", markdown=markdown(result, paths),
                             description=f"customer KPIs {result.start} to {result.end}")
    data = result.to_json()
    monthly = data["monthly"] if result.has_events else [{k: v for k, v in r.items() if k != "engaged"}
                                                         for r in data["monthly"]]
    create_table_artifact(key="kpis-monthly", table=table_rows(monthly),
                          description="by month: sign-ups, buyers, orders, revenue and AOV; active: an order in the "
                                      "90 days up to the month's end; engaged: any interaction in the month")
    create_table_artifact(key="kpis-cohorts", table=table_rows(data["cohorts"]),
                          description="by sign-up cohort: each funnel step with its share of the step before; a "
                                      "second order within 30 days of the first, of the buyers whose first is 30+ days old")
    from prefect.runtime import flow_run

    return {"from": result.start.isoformat(), "to": result.end.isoformat(), "totals": result.to_json()["totals"],
            "report": str(paths["html"]), "flow_run_id": str(flow_run.id)}
