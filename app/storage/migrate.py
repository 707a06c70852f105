"""Schema migrations (Alembic, app/storage/migrations/): the only way the schema
is created or changed, on SQLite and PostgreSQL alike (SPEC §12)."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Boolean, Connection, false, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("weft.migrate")
# Alembic's own INFO lines (plugins, dialect) say nothing an operator needs.
logging.getLogger("alembic").setLevel(logging.WARNING)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The revision whose schema the code before migrations made (create_all plus
# the tus column it added by hand); such a database is stamped with it.
BASELINE = "0001"


def advisory_key(namespace: str) -> int:
    """A signed 64-bit pg_advisory_lock key per namespace."""
    digest = hashlib.sha256(f"weft-migrate:{namespace}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _adopt_unversioned(connection: Connection, config: Config) -> None:
    """A database made before migrations has the tables but no alembic_version:
    bring it to exactly the baseline's schema, then stamp it."""
    inspector = inspect(connection)
    tables = set(inspector.get_table_names())
    if "streams" not in tables or "alembic_version" in tables:
        return
    columns = {column["name"]: column for column in inspector.get_columns("streams")}
    tus = columns.get("tus")
    if tus is None:
        default = "0" if connection.dialect.name == "sqlite" else "false"
        connection.execute(
            text(f"ALTER TABLE streams ADD COLUMN tus BOOLEAN NOT NULL DEFAULT {default}")
        )
    elif connection.dialect.name == "sqlite" and tus.get("default") != "0":
        # The earlier code added the column with DEFAULT false, where create_all
        # says DEFAULT 0; SQLite changes a default only by rebuilding the table.
        with Operations(MigrationContext.configure(connection)).batch_alter_table(
            "streams", recreate="always"
        ) as batch:
            batch.alter_column(
                "tus", existing_type=Boolean(), existing_nullable=False, server_default=false()
            )
    command.stamp(config, BASELINE)
    log.info("adopted a database made before migrations as revision %s", BASELINE)


def _upgrade(connection: Connection) -> None:
    config = _config(connection)
    _adopt_unversioned(connection, config)
    current = MigrationContext.configure(connection).get_current_revision()
    head = ScriptDirectory.from_config(config).get_current_head()
    if current != head:
        log.info("migrating the database schema from %s to %s", current or "empty", head)
        command.upgrade(config, "head")


@asynccontextmanager
async def _sqlite_file_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """Processes sharing one SQLite file take turns, as nodes do on PostgreSQL's
    advisory lock (flock; waited for in a thread, so the loop keeps running)."""
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    fd = os.open(f"{database}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


async def migrate(engine: AsyncEngine, namespace: str) -> None:
    """Apply pending migrations. On PostgreSQL under an advisory lock per
    namespace, so nodes starting together take turns instead of racing."""
    if engine.dialect.name != "postgresql":
        async with _sqlite_file_lock(engine), engine.connect() as conn:
            await conn.run_sync(_upgrade)
            await conn.commit()
        return
    key = {"key": advisory_key(namespace)}
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:key)"), key)
        await conn.commit()
        try:
            # The connection's search_path already names it; a missing schema is
            # skipped until it exists.
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{namespace}"'))
            await conn.run_sync(_upgrade)
            await conn.commit()
        finally:
            await conn.rollback()  # after a failure, so that the unlock can run
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), key)
            await conn.commit()
