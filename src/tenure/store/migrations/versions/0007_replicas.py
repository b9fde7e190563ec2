"""Replicas: each commit notifies the followers (PostgreSQL), events carry their leader's epoch, the replicas.

On PostgreSQL a trigger on ``state`` sends ``NOTIFY tenure_events, '<revision>'`` whenever the committed
revision moves. It fires inside the leader's batch transaction, so the notification is delivered only if
the batch commits, and costs the leader no extra round trip. It only wakes the followers' tailers: they read
the events by revision, so a lost notification loses nothing (docs/replication.md).

``replicas``: one row per replica name, heartbeated by the replica while it runs (role, epoch, the revision
it has applied, its address), so that ``tenure replicas`` can list them and a second process with the same
name is refused while the first one lives.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION tenure_notify_revision() RETURNS trigger AS $$
BEGIN
    IF NEW.revision IS DISTINCT FROM OLD.revision THEN
        PERFORM pg_notify('tenure_events', NEW.revision::text);
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql
"""

NOTIFY_TRIGGER = """
CREATE TRIGGER tenure_state_notify AFTER UPDATE ON state
FOR EACH ROW EXECUTE FUNCTION tenure_notify_revision()
"""


def upgrade() -> None:
    # The epoch of the leader that committed each event: the log shows that two leaders never both wrote.
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("epoch", sa.BigInteger, nullable=True))
    op.create_table(
        "replicas",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("address", sa.String(512), nullable=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("incarnation", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(NOTIFY_FUNCTION)
        op.execute(NOTIFY_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS tenure_state_notify ON state")
        op.execute("DROP FUNCTION IF EXISTS tenure_notify_revision()")
    op.drop_table("replicas")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("epoch")
