"""Foundation: state, pools, claims, the event log and tokens.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("compacted_revision", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(
        sa.table("state", sa.column("id"), sa.column("revision"), sa.column("compacted_revision")),
        [{"id": 1, "revision": 0, "compacted_revision": 0}],
    )
    op.create_table(
        "pools",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("ranges", sa.Text, nullable=False),
        sa.Column("reserved", sa.Text, nullable=False),
        sa.Column("strategy", sa.String(16), nullable=False),
        sa.Column("projects", sa.Text, nullable=True),
        sa.Column("cursor", sa.BigInteger, nullable=False),
        sa.Column("audit_epoch", sa.Integer, nullable=False),
        sa.Column("auditing", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "claims",
        sa.Column("pool_id", sa.Integer, sa.ForeignKey("pools.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
        sa.Column("project", sa.String(128), nullable=True),
        sa.Column("host", sa.String(128), nullable=True),
        sa.Column("mark", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("pool_id", "value", name="uq_claims_pool_value"),
    )
    op.create_table(
        "events",
        sa.Column("revision", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("object_id", sa.Text, nullable=False),
        sa.Column("op", sa.String(16), nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_index("ix_events_kind_revision", "events", ["kind", "revision"])
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("project", sa.String(128), nullable=True),
        sa.Column("host", sa.String(128), nullable=True),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for name in ("tokens", "events", "claims", "pools", "state"):
        op.drop_table(name)
