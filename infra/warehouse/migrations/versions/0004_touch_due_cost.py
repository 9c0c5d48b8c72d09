"""Deferred touches and what a touch costs.

`due_at` (naive UTC) is when a touch deferred by quiet hours may go out; `payload` is its message,
rendered when it was decided (JSON), so it is sent as decided even if the playbook changes meanwhile;
`cost` is the offer's unit cost (coupon) the touch committed, for budgets and ROI; `skipped` says why
the tiers before the chosen one passed the customer by ("0:capacity 1:no_consent"), for `explain`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("touches") as batch:
        batch.add_column(sa.Column("due_at", sa.DateTime))
        batch.add_column(sa.Column("payload", sa.Text))
        batch.add_column(sa.Column("cost", sa.Float))
        batch.add_column(sa.Column("skipped", sa.String(256)))
    op.create_index("ix_touches_due", "touches", ["status", "due_at"])


def downgrade() -> None:
    op.drop_index("ix_touches_due", table_name="touches")
    with op.batch_alter_table("touches") as batch:
        batch.drop_column("skipped")
        batch.drop_column("cost")
        batch.drop_column("payload")
        batch.drop_column("due_at")
