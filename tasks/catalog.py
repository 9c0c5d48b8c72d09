"""The feature catalog: every column a playbook expression may name, with type, unit and meaning.

Pure data (no Prefect, no database): the compiler checks expressions against it, the features step
guarantees its output has exactly these columns, and the author's guide is generated from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FeatureType = Literal["number", "integer", "string", "date", "boolean"]
# Where a feature comes from: a feature whose table is absent (a CSV import without events, say) is
# left out of the feature frame and the model, never filled with made-up zeros.
FeatureSource = Literal["customers", "orders", "events", "model"]


@dataclass(frozen=True)
class Feature:
    name: str
    type: FeatureType
    unit: str
    meaning: str
    nullable: bool = False
    source: FeatureSource = "orders"
    model: bool = True  # the churn model may use it (False: context for rules and templates only)


FEATURES: tuple[Feature, ...] = (
    # Tier and points are the customer table's current values, not their values at a past cutoff: a
    # model trained on them at earlier cutoffs would read orders placed after each cutoff (the demo
    # world's tier is last year's spend as of today). Rules may use them; the model does not.
    Feature("member_tier", "string", "", "membership tier: bronze, silver, gold or diamond", nullable=True,
            source="customers", model=False),
    Feature("points", "integer", "points", "current points balance", source="customers", model=False),
    Feature("timezone", "string", "", "IANA timezone of the customer, e.g. Asia/Shanghai", source="customers",
            model=False),
    Feature("tenure_days", "integer", "days", "days since sign-up (since the first order when sign-up is unknown)"),
    Feature("days_to_birthday", "integer", "days", "days until the next birthday (0 = today)", nullable=True,
            source="customers", model=False),
    Feature("orders_total", "integer", "orders", "orders placed up to the as-of date"),
    Feature("orders_30d", "integer", "orders", "orders in the 30 days up to the as-of date"),
    Feature("orders_90d", "integer", "orders", "orders in the 90 days up to the as-of date"),
    Feature("orders_prev_90d", "integer", "orders", "orders in the 90 days before those 90 (days 91-180 back)"),
    Feature("orders_180d", "integer", "orders", "orders in the 180 days up to the as-of date"),
    Feature("orders_365d", "integer", "orders", "orders in the 365 days up to the as-of date"),
    Feature("orders_change_90d", "number", "ratio",
            "change in orders, last 90 days vs the 90 before (-0.5 = halved); null when there were none before",
            nullable=True),
    Feature("monetary_30d", "number", "currency", "order value in the last 30 days"),
    Feature("monetary_90d", "number", "currency", "order value in the last 90 days"),
    Feature("monetary_prev_90d", "number", "currency", "order value in the 90 days before those 90"),
    Feature("monetary_365d", "number", "currency", "order value in the last 365 days"),
    Feature("monetary_total", "number", "currency", "order value up to the as-of date"),
    Feature("monetary_change_90d", "number", "ratio",
            "change in order value, last 90 days vs the 90 before; null when there was none before", nullable=True),
    Feature("avg_order_value", "number", "currency", "average order value up to the as-of date", nullable=True),
    Feature("recency_days", "integer", "days", "days since the last order (null: never ordered)", nullable=True),
    Feature("first_order_days", "integer", "days", "days since the first order (null: never ordered)", nullable=True),
    Feature("mean_gap_days", "number", "days", "usual gap between orders: mean days between consecutive orders "
            "(null: fewer than 2 orders)", nullable=True),
    Feature("gap_std_days", "number", "days", "standard deviation of the gaps between orders (null: fewer than 2 orders)",
            nullable=True),
    Feature("max_gap_days", "number", "days", "longest gap between two orders (null: fewer than 2 orders)",
            nullable=True),
    Feature("recency_gap_ratio", "number", "ratio", "days since the last order divided by the usual gap "
            "(3 = three usual gaps without an order; null: fewer than 2 orders)", nullable=True),
    Feature("visits_30d", "integer", "visits", "app / mini-program visits in the last 30 days (needs events)",
            source="events"),
    Feature("visits_prev_30d", "integer", "visits", "visits in the 30 days before that (needs events)", source="events"),
    Feature("opens_30d", "integer", "opens", "message opens in the last 30 days (needs events)", source="events"),
    Feature("clicks_30d", "integer", "clicks", "message clicks in the last 30 days (needs events)", source="events"),
    Feature("group_30d", "integer", "messages", "customer-group chat messages in the last 30 days (needs events)",
            source="events"),
    Feature("engagement_30d", "integer", "events", "all interactions (visits, views, opens, clicks, group messages) "
            "in the last 30 days (needs events)", source="events"),
    Feature("engagement_prev_30d", "integer", "events", "all interactions in the 30 days before that (needs events)",
            source="events"),
    Feature(
        "engagement_change",
        "number",
        "ratio",
        "change in interactions, last 30 days vs the 30 before (-0.3 = dropped 30%); null when there were none "
        "before (needs events)",
        nullable=True,
        source="events",
    ),
    Feature("last_event_days", "integer", "days", "days since the last interaction (null: none in the last 180 days; "
            "needs events)", nullable=True, source="events"),
    Feature("churn_score", "number", "probability", "P(no order in the model's horizon), from the churn model; null without a model", nullable=True,
            source="model", model=False),
    Feature("uplift_score", "number", "probability", "predicted change in the chance of the playbook's goal if "
            "touched, from its uplift model (`lifecycle uplift`); needs a goal", nullable=True, source="model",
            model=False),
)

BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}
