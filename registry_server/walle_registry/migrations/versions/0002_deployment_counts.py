"""Per-deployment, per-stage status counters (maintained incrementally), backfilled from assignments.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployment_counts",
        sa.Column("deployment_id", sa.Integer(), sa.ForeignKey("deployments.id"), primary_key=True),
        sa.Column("stage", sa.Integer(), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("n", sa.Integer(), nullable=False),
    )
    op.execute("INSERT INTO deployment_counts (deployment_id, stage, status, n) "
               "SELECT deployment_id, stage, status, COUNT(*) FROM assignments "
               "GROUP BY deployment_id, stage, status")


def downgrade() -> None:
    op.drop_table("deployment_counts")
