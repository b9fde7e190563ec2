"""The durable store: SQLAlchemy Core schema, Alembic migrations, SQLite or PostgreSQL."""
