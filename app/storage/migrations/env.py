"""Alembic's environment: always handed an open connection by app/storage/migrate.py."""

from __future__ import annotations

from alembic import context

from app.storage.metadata import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
