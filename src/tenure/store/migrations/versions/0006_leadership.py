"""Leadership of replicas on PostgreSQL: one row, the epoch, who holds the lease and until when.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "leadership",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("holder", sa.String(128), nullable=True),
        sa.Column("address", sa.String(512), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
    )
    never = datetime(1970, 1, 1, tzinfo=UTC)
    op.bulk_insert(table, [{"id": 1, "epoch": 0, "holder": None, "address": None, "lease_until": never,
                            "changed_at": never}])


def downgrade() -> None:
    op.drop_table("leadership")
