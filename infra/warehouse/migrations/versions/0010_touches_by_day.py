"""The ledger's indexes by as-of day: per customer, and per status.

Every run looks up its customers' recent touches by day: sends in the frequency cap's window, other
playbooks' touches on the same day, a customer's history in `explain`. With (customer_id, created_at)
and (status, due_at), SQLite's planner read every `sent` row ever written for the cap (it has no
statistics to prefer the customer index), a cost that grows with the ledger's history. With
(status, as_of, due_at) it reads the sends of the cap's window and the touches of the day; with
(customer_id, as_of) one customer's days. Deferred delivery still finds `deferred` rows by status.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_touches_customer", table_name="touches")
    op.create_index("ix_touches_customer", "touches", ["customer_id", "as_of"])
    op.drop_index("ix_touches_due", table_name="touches")
    op.create_index("ix_touches_status", "touches", ["status", "as_of", "due_at"])


def downgrade() -> None:
    op.drop_index("ix_touches_status", table_name="touches")
    op.create_index("ix_touches_due", "touches", ["status", "due_at"])
    op.drop_index("ix_touches_customer", table_name="touches")
    op.create_index("ix_touches_customer", "touches", ["customer_id", "created_at"])
