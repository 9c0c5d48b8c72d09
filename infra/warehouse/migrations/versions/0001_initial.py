"""Initial warehouse: customers, orders, events, consents, touch ledger, outbox, model registry.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")
Money = sa.Numeric(12, 2, asdecimal=False)


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("signed_up_at", sa.DateTime, nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("member_tier", sa.String(16)),
        sa.Column("points", sa.Integer),
        sa.Column("birthday", sa.Date),
        sa.Column("first_name", sa.String(64)),
        sa.Column("email", sa.String(254)),
        sa.Column("phone", sa.String(32)),
        sa.Column("advisor_id", sa.String(64)),
    )
    op.create_table(
        "orders",
        sa.Column("order_id", sa.String(64), primary_key=True),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("ordered_at", sa.DateTime, nullable=False),
        sa.Column("amount", Money, nullable=False),
        sa.Column("channel", sa.String(32)),
        sa.Column("category", sa.String(64)),
        sa.Column("items", sa.Integer),
    )
    op.create_index("ix_orders_customer_time", "orders", ["customer_id", "ordered_at"])
    op.create_index("ix_orders_time", "orders", ["ordered_at"])
    op.create_table(
        "events",
        sa.Column("event_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("occurred_at", sa.DateTime, nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(32)),
    )
    op.create_index("ix_events_customer_time", "events", ["customer_id", "occurred_at"])
    op.create_index("ix_events_time", "events", ["occurred_at"])
    op.create_table(
        "consents",
        sa.Column("consent_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("granted_at", sa.DateTime, nullable=False),
        sa.Column("withdrawn_at", sa.DateTime),
    )
    op.create_index("ix_consents_customer", "consents", ["customer_id", "channel", "purpose"])
    op.create_table(
        "touches",
        sa.Column("touch_key", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.String(64)),
        sa.Column("playbook", sa.String(128), nullable=False),
        sa.Column("playbook_version", sa.String(32), nullable=False),
        sa.Column("plan_hash", sa.String(64), nullable=False),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("segment", sa.String(64)),
        sa.Column("tier", sa.Integer),
        sa.Column("channel", sa.String(64)),
        sa.Column("template", sa.String(256)),
        sa.Column("variant", sa.String(64)),
        sa.Column("score", sa.Float),
        sa.Column("model_version", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(128)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_touches_customer", "touches", ["customer_id", "created_at"])
    op.create_index("ix_touches_playbook", "touches", ["playbook", "as_of"])
    op.create_table(
        "outbox",
        sa.Column("touch_key", sa.String(64), primary_key=True),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(256)),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "model_registry",
        sa.Column("model_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("horizon_days", sa.Integer, nullable=False),
        sa.Column("meta", sa.Text, nullable=False),
        sa.Column("booster", sa.Text, nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_model_name_version"),
    )


def downgrade() -> None:
    for table in ("model_registry", "outbox", "touches", "consents", "events", "orders", "customers"):
        op.drop_table(table)
