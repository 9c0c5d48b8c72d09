"""An index on journeys (playbook, entered_on), for the re-entry rule.

A daily run keeps out the customers who entered in the last `reentry.days`: with this index that is
one range read of those entries, not a lookup per selected customer (327,000 of them at a million
customers, 2 s on SQLite).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_journeys_entered", "journeys", ["playbook", "entered_on"])


def downgrade() -> None:
    op.drop_index("ix_journeys_entered", table_name="journeys")
