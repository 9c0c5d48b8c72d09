"""Journeys: each customer's place in a playbook's steps, and the plans they run on.

`journeys` holds one row per (playbook, customer, entry day): the arm (treated or holdout), the plan
they entered on, the next follow-up step and when it is due, and the state (active, done, converted).
`plans` keeps every compiled plan a run used, by hash, so customers already in a journey finish on
the version they entered even after the playbook changes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journeys",
        sa.Column("playbook", sa.String(128), primary_key=True),
        sa.Column("customer_id", sa.String(64), primary_key=True),
        sa.Column("entered_on", sa.Date, primary_key=True),
        sa.Column("plan_hash", sa.String(64), nullable=False),
        sa.Column("playbook_version", sa.String(32), nullable=False),
        sa.Column("segment", sa.String(64)),
        sa.Column("arm", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("next_step", sa.Integer),
        sa.Column("next_due", sa.Date),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_journeys_due", "journeys", ["playbook", "state", "next_due"])
    op.create_index("ix_journeys_customer", "journeys", ["customer_id"])
    op.create_table(
        "plans",
        sa.Column("plan_hash", sa.String(64), primary_key=True),
        sa.Column("playbook", sa.String(128), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("plan", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("plans")
    op.drop_index("ix_journeys_customer", table_name="journeys")
    op.drop_index("ix_journeys_due", table_name="journeys")
    op.drop_table("journeys")
