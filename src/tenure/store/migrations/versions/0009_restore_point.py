"""Where a store was restored from a backup (store/backup.py): the backup's revision and the revision the restored
store went on from. Revisions between them were issued by the store the backup came from, after the backup; a
watch resuming from one of them gets 410 (docs/operations.md, section 2).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("state") as batch:
        batch.add_column(sa.Column("restored_from", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("restored_to", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("state") as batch:
        batch.drop_column("restored_to")
        batch.drop_column("restored_from")
