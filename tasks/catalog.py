"""The feature catalog: every column a playbook expression may name, with type, unit and meaning.

Pure data (no Prefect, no database): the compiler checks expressions against it, the features step
guarantees its output has exactly these columns, and the author's guide is generated from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FeatureType = Literal["number", "integer", "string", "date", "boolean"]


@dataclass(frozen=True)
class Feature:
    name: str
    type: FeatureType
    unit: str
    meaning: str
    nullable: bool = False


FEATURES: tuple[Feature, ...] = (
    Feature("member_tier", "string", "", "membership tier: bronze, silver, gold or diamond", nullable=True),
    Feature("points", "integer", "points", "current points balance"),
    Feature("timezone", "string", "", "IANA timezone of the customer, e.g. Asia/Shanghai"),
    Feature("tenure_days", "integer", "days", "days since sign-up"),
    Feature("days_to_birthday", "integer", "days", "days until the next birthday (0 = today)", nullable=True),
    Feature("orders_total", "integer", "orders", "orders placed up to the as-of date"),
    Feature("orders_30d", "integer", "orders", "orders in the 30 days up to the as-of date"),
    Feature("orders_90d", "integer", "orders", "orders in the 90 days up to the as-of date"),
    Feature("orders_365d", "integer", "orders", "orders in the 365 days up to the as-of date"),
    Feature("monetary_90d", "number", "currency", "order value in the last 90 days"),
    Feature("monetary_365d", "number", "currency", "order value in the last 365 days"),
    Feature("monetary_total", "number", "currency", "order value up to the as-of date"),
    Feature("avg_order_value", "number", "currency", "average order value up to the as-of date", nullable=True),
    Feature("recency_days", "integer", "days", "days since the last order (null: never ordered)", nullable=True),
    Feature("first_order_days", "integer", "days", "days since the first order (null: never ordered)", nullable=True),
    Feature("visits_30d", "integer", "visits", "app / mini-program visits in the last 30 days"),
    Feature("visits_prev_30d", "integer", "visits", "visits in the 30 days before that"),
    Feature("opens_30d", "integer", "opens", "message opens in the last 30 days"),
    Feature("clicks_30d", "integer", "clicks", "message clicks in the last 30 days"),
    Feature("engagement_30d", "integer", "events", "all interactions (visits, views, opens, clicks, group messages) in the last 30 days"),
    Feature("engagement_prev_30d", "integer", "events", "all interactions in the 30 days before that"),
    Feature(
        "engagement_change",
        "number",
        "ratio",
        "change in interactions, last 30 days vs the 30 before (-0.3 = dropped 30%); null when there were none before",
        nullable=True,
    ),
    Feature("churn_score", "number", "probability", "P(no order in the model's horizon), from the churn model; null without a model", nullable=True),
)

BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}
