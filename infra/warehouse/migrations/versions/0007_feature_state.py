"""Incremental features: each customer's aggregates as of the last run, and the state's watermark.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

COUNTS = ("orders_total", "orders_30d", "orders_90d", "orders_prev_90d", "orders_180d", "orders_365d",
          "visits_30d", "visits_prev_30d", "opens_30d", "clicks_30d", "group_30d", "engagement_30d",
          "engagement_prev_30d")
MONEY = ("monetary_total", "monetary_30d", "monetary_90d", "monetary_prev_90d", "monetary_365d")


def upgrade() -> None:
    op.create_table(
        "feature_state",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        *(sa.Column(name, sa.Integer, nullable=False) for name in COUNTS),
        *(sa.Column(name, sa.Float, nullable=False) for name in MONEY),
        sa.Column("first_order_at", sa.DateTime),
        sa.Column("last_order_at", sa.DateTime),
        sa.Column("gap_sq_sum", sa.Float, nullable=False),
        sa.Column("max_gap_days", sa.Float),
        sa.Column("last_event_at", sa.DateTime),
    )
    op.create_table(
        "feature_watermark",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("orders_before", sa.BigInteger, nullable=False),
        sa.Column("events_window", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("feature_watermark")
    op.drop_table("feature_state")
