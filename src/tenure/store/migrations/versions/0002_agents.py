"""Agents: one row per host agent (registration, heartbeat, up/down).

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


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("host", sa.String(128), primary_key=True),
        sa.Column("kinds", sa.Text, nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("capabilities", sa.Text, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("agents")
