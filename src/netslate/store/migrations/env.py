"""Alembic environment. Each part has its own branch off `0001_core`; we upgrade to `heads`."""

from alembic import context

from netslate.store.db import Base
from netslate.store.registry import import_all_models

import_all_models()
target_metadata = Base.metadata

connection = context.config.attributes.get("connection")
if connection is None:
    from sqlalchemy import create_engine

    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    connection = engine.connect()

context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
