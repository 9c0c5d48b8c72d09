"""The playbook's priority on each ledger row, so a later run can tell who outranks whom that day.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("touches") as batch:
        batch.add_column(sa.Column("priority", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("touches") as batch:
        batch.drop_column("priority")
