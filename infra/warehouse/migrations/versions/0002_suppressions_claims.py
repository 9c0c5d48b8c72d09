"""Suppression list, and claim columns on the touch ledger so concurrent runs never both deliver a key.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "suppressions",
        sa.Column("suppression_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(32)),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_suppressions_customer", "suppressions", ["customer_id"])
    with op.batch_alter_table("touches") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(64)))
        batch.add_column(sa.Column("claimed_at", sa.DateTime))


def downgrade() -> None:
    with op.batch_alter_table("touches") as batch:
        batch.drop_column("claimed_at")
        batch.drop_column("claimed_by")
    op.drop_table("suppressions")
