"""The feature state keeps the customers too, on PostgreSQL: the transaction horizon they were read at.

A run then reads only the customer rows written since (PostgreSQL's row version, `xmin`), not all of
them (tasks/incremental.py). NULL: no customers kept (SQLite, or a state kept before this revision).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("feature_watermark", sa.Column("customers_xid", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM feature_blocks WHERE kind = 'customers'")
    with op.batch_alter_table("feature_watermark") as batch:
        batch.drop_column("customers_xid")
