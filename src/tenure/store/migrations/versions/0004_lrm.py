"""The local resource manager: instances, recurring schedules, last results, history.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lrm_instances",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("driver", sa.String(512), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "lrm_recurring",
        sa.Column("op_id", sa.String(40), primary_key=True),
        sa.Column("instance_id", sa.String(40), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_lrm_recurring_instance_id", "lrm_recurring", ["instance_id"])
    op.create_table(
        "lrm_results",
        sa.Column("instance_id", sa.String(40), primary_key=True),
        sa.Column("op_key", sa.String(160), primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_table(
        "lrm_history",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("instance_id", sa.String(40), nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_index("ix_lrm_history_instance", "lrm_history", ["instance_id", "revision"])


def downgrade() -> None:
    for name in ("lrm_history", "lrm_results", "lrm_recurring", "lrm_instances"):
        op.drop_table(name)
