"""The tables, in SQLAlchemy Core.

State rows and their event rows are written in the same transaction by the
service layer (DESIGN.md invariant 1). Times are UTC. Values are BIGINT because
pools hold values up to 2**32 - 1. ``claims`` has a unique (pool, value) index,
so even a bug above the store can never give one value to two keys.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData()

# Claim keys order byte-wise on every backend ("C" collation on PostgreSQL; SQLite's BINARY is the
# default), so pages and `after` cursors agree whatever locale the database was created with.
KEY_TYPE = Text().with_variant(Text(collation="C"), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is UTC-aware on both backends (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: Tenure stores UTC-aware times only")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# One row: the newest revision committed, and the oldest still in the event log. After a restore from a backup
# (store/backup.py), revisions in (restored_from, restored_to) were issued only by the store the backup came from.
state = Table(
    "state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("revision", BigInteger, nullable=False),
    Column("compacted_revision", BigInteger, nullable=False),
    Column("restored_from", BigInteger, nullable=True),
    Column("restored_to", BigInteger, nullable=True),
)

pools = Table(
    "pools",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(128), nullable=False, unique=True),
    Column("ranges", Text, nullable=False),  # JSON [[lo, hi], ...]
    Column("reserved", Text, nullable=False),  # JSON [[lo, hi], ...]
    Column("strategy", String(16), nullable=False),
    Column("projects", Text, nullable=True),  # JSON list, NULL = open to all
    Column("cursor", BigInteger, nullable=False),
    Column("audit_epoch", Integer, nullable=False),
    Column("auditing", Boolean, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revision", BigInteger, nullable=False),
)

claims = Table(
    "claims",
    metadata,
    Column("pool_id", Integer, ForeignKey("pools.id", ondelete="CASCADE"), primary_key=True),
    Column("key", KEY_TYPE, primary_key=True),
    Column("value", BigInteger, nullable=False),
    Column("project", String(128), nullable=True),
    Column("host", String(128), nullable=True),
    Column("mark", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revision", BigInteger, nullable=False),
    UniqueConstraint("pool_id", "value", name="uq_claims_pool_value"),
)

events = Table(
    "events",
    metadata,
    Column("revision", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", UTCDateTime(), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("object_id", Text, nullable=False),
    Column("op", String(16), nullable=False),  # created | updated | deleted
    Column("labels", Text, nullable=False),  # JSON object
    Column("body", Text, nullable=False),  # JSON: the object as the API returns it
    # The leadership epoch of the replica that committed it (docs/replication.md); NULL: not a replica.
    # Along the log it never decreases: two leaders never both commit.
    Column("epoch", BigInteger, nullable=True),
)
Index("ix_events_kind_revision", events.c.kind, events.c.revision)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("hash", String(64), nullable=False, unique=True),  # sha256 hex of the secret token
    Column("role", String(16), nullable=False),  # admin | agent | member
    Column("project", String(128), nullable=True),
    Column("host", String(128), nullable=True),
    Column("description", Text, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
    Column("revision", BigInteger, nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True),  # NULL: never
    Column("last_used_at", UTCDateTime(), nullable=True),  # written in batches (services/tokens.py), not an event
    Column("previous_hash", String(64), nullable=True),  # a rotation's old secret, valid until previous_until
    Column("previous_until", UTCDateTime(), nullable=True),
    Column("expired_at", UTCDateTime(), nullable=True),  # when the expiry's event was written (NULL: not yet)
)

# One agent per host (services/agents.py); last_seen moves with every heartbeat, revision only with events.
agents = Table(
    "agents",
    metadata,
    Column("host", String(128), primary_key=True),
    Column("kinds", Text, nullable=False),  # JSON list of event kinds
    Column("version", String(64), nullable=False),
    Column("capabilities", Text, nullable=False),  # JSON object
    Column("state", String(8), nullable=False),  # up | down
    Column("registered_at", UTCDateTime(), nullable=False),
    Column("last_seen", UTCDateTime(), nullable=False),
    Column("revision", BigInteger, nullable=False),
)

# The network as one canonical JSON document (domain/topology.py); one row, id 1, written whole on each change.
topology = Table(
    "topology",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("doc", Text, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("revision", BigInteger, nullable=False),
)

# Reservations (services/reservations.py): the columns that are looked up, and the body as the API returns it,
# paths included, so a restart rebuilds the ledgers from exactly the paths that were admitted.
reservations = Table(
    "reservations",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("seq", BigInteger, nullable=False),  # admission order: topology changes re-admit oldest first
    Column("project", String(128), nullable=True),
    Column("request_id", String(128), nullable=True),
    Column("request_hash", String(64), nullable=True),
    Column("state", String(16), nullable=False),
    Column("start_us", BigInteger, nullable=False),
    Column("end_us", BigInteger, nullable=False),
    Column("body", Text, nullable=False),
    Column("revision", BigInteger, nullable=False),
)
Index("ix_reservations_state", reservations.c.state)

# Per-project limits (Tegu's fences): the most a project may hold on any link direction at any instant.
limits = Table(
    "limits",
    metadata,
    Column("project", String(128), primary_key=True),
    Column("max_bps", BigInteger, nullable=True),
    Column("share", String(32), nullable=True),  # exact decimal share of each link's capacity, e.g. "0.25"
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("revision", BigInteger, nullable=False),
)

# The host agent's local resource manager (tenure.lrm): instances, recurring schedules, the last result of each
# operation key (start, monitor, monitor:10000, ...) and a bounded history of results per instance.
lrm_instances = Table(
    "lrm_instances",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("driver", String(512), nullable=False),
    Column("body", Text, nullable=False),  # params, labels, created_at, state
    Column("revision", BigInteger, nullable=False),
)

lrm_recurring = Table(
    "lrm_recurring",
    metadata,
    Column("op_id", String(40), primary_key=True),
    Column("instance_id", String(40), nullable=False, index=True),
    Column("body", Text, nullable=False),
    Column("revision", BigInteger, nullable=False),  # of its "operation created" event: the order they came in
)

lrm_results = Table(
    "lrm_results",
    metadata,
    Column("instance_id", String(40), primary_key=True),
    Column("op_key", String(160), primary_key=True),
    Column("body", Text, nullable=False),
)

lrm_history = Table(
    "lrm_history",
    metadata,
    Column("run_id", String(64), primary_key=True),  # op id for a one-shot, "<op id>.<run>" for a recurring run
    Column("instance_id", String(40), nullable=False),
    Column("revision", BigInteger, nullable=False),  # of the event recorded with it: the history's order
    Column("body", Text, nullable=False),
)
Index("ix_lrm_history_instance", lrm_history.c.instance_id, lrm_history.c.revision)

# Desired-state instances on the server (services/instances.py): one row per instance not yet deleted.
instances = Table(
    "instances",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("scope", String(128), nullable=False),  # the project, or "" for an admin's instance: names are per scope
    Column("name", String(128), nullable=False),
    Column("host", String(128), nullable=False),
    Column("state", String(16), nullable=False),
    Column("body", Text, nullable=False),
    Column("revision", BigInteger, nullable=False),
    UniqueConstraint("scope", "name", name="uq_instances_scope_name"),
)
Index("ix_instances_host", instances.c.host)

# A host agent's sync loop (agent/sync.py): what it converged of each of its host's instances, and where its
# watch resumes.
agent_instances = Table(
    "agent_instances",
    metadata,
    Column("id", String(40), primary_key=True),  # the server's instance id
    Column("body", Text, nullable=False),
)

agent_state = Table(
    "agent_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# Replicas on PostgreSQL (docs/replication.md): one row (id 1). The epoch grows at every change of leader; the
# leader's every write transaction checks it (store.leadership), so a deposed leader commits nothing.
leadership = Table(
    "leadership",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("epoch", BigInteger, nullable=False),
    Column("holder", String(128), nullable=True),
    Column("address", String(512), nullable=True),
    Column("lease_until", UTCDateTime(), nullable=False),
    Column("changed_at", UTCDateTime(), nullable=False),
)

# One row per replica name, heartbeated while it runs (docs/replication.md); on PostgreSQL only in use.
replicas = Table(
    "replicas",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("address", String(512), nullable=True),
    Column("role", String(16), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("incarnation", String(64), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("seen_at", UTCDateTime(), nullable=False),
)

# The web console's sign-in (services/sessions.py): one-time codes and browser sessions, each stored only as the
# SHA-256 of its secret, with the token it stands for and when it ends. Not events: nothing of them is watched.
ui_sessions = Table(
    "ui_sessions",
    metadata,
    Column("hash", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # code | session
    Column("token_id", String(32), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)
Index("ix_ui_sessions_token", ui_sessions.c.token_id)
