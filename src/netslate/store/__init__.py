"""The store: SQLAlchemy 2 models and sessions, Alembic migrations. SQLite by default, PostgreSQL at scale."""

from netslate.store.db import Base, Database, utcnow

__all__ = ["Base", "Database", "utcnow"]
