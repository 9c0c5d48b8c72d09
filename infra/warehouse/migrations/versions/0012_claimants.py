"""Claimants: who holds claims on the touch ledger (host, process, Prefect flow run), per claim token.

A rerun takes over a `planned` touch whose claimant is known to be gone (its process is not alive on
this host, or its flow run crashed, failed or was cancelled) at once, instead of waiting for the
claim's lease to run out (tasks/claims.py).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "claimants",
        sa.Column("token", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started", sa.String(32)),
        sa.Column("flow_run_id", sa.String(64)),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("claimants")
