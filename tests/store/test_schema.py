"""The migrations build exactly the tables store/schema.py describes (Alembic's own comparison), on both stores."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tenure.store import schema
from tenure.store.engine import make_engine, migrate


def test_the_migrated_store_is_the_schema_the_code_describes(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        migrate(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), schema.metadata)
    finally:
        engine.dispose()
    assert diff == []
