"""Incremental features kept as columnar blocks instead of one row per customer.

A daily run reads every customer's state and writes it back moved forward: as rows, a million
customers took 6.7 s to read and 5.4 s to rewrite on SQLite; as blocks of numpy columns, under a
second each. The state is a cache of aggregates that can always be recomputed from the orders and
events, so the old rows are dropped and the next run starts a new state with a full extract.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feature_blocks",
        sa.Column("kind", sa.String(16), primary_key=True),  # "orders" or "events"
        sa.Column("block", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("first_customer", sa.String(64), nullable=False),
        sa.Column("last_customer", sa.String(64), nullable=False),
        sa.Column("customers", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":  # the blocks come deflated: TOAST need not try again
        op.execute("ALTER TABLE feature_blocks ALTER COLUMN data SET STORAGE EXTERNAL")
    op.execute("DELETE FROM feature_watermark WHERE name = 'features'")
    op.drop_table("feature_state")


def downgrade() -> None:
    from importlib import import_module

    op.execute("DELETE FROM feature_watermark WHERE name = 'features'")
    op.drop_table("feature_blocks")
    previous = import_module("infra.warehouse.migrations.versions.0007_feature_state")
    op.create_table("feature_state", sa.Column("customer_id", sa.String(64), primary_key=True),
                    *(sa.Column(n, sa.Integer, nullable=False) for n in previous.COUNTS),
                    *(sa.Column(n, sa.Float, nullable=False) for n in previous.MONEY),
                    sa.Column("first_order_at", sa.DateTime), sa.Column("last_order_at", sa.DateTime),
                    sa.Column("gap_sq_sum", sa.Float, nullable=False), sa.Column("max_gap_days", sa.Float),
                    sa.Column("last_event_at", sa.DateTime))
