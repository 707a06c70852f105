"""The schema comes from Alembic migrations only, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import BigInteger, Column, Connection, Index, MetaData, String, Table, text
from sqlalchemy.types import JSON

from app.storage.metadata import Base, SqlMetadataRepo
from app.storage.migrate import BASELINE
from app.streams.models import StreamState
from tests.contract.test_metadata_contract import info
from tests.pg import fresh_database

HEAD = "0005"
TABLES = {"streams", "leases", "secrets", "hook_outbox", "links", "alembic_version"}
RepoFactory = Callable[[], SqlMetadataRepo]


@pytest.fixture(params=["sqlite", "postgresql"])
async def make_repo(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RepoFactory]:
    """Repositories on one fresh, empty database (one new schema on PostgreSQL)."""
    url, namespace = fresh_database(request.param, tmp_path)
    made: list[SqlMetadataRepo] = []

    def make() -> SqlMetadataRepo:
        made.append(SqlMetadataRepo(url, namespace=namespace))
        return made[-1]

    try:
        yield make
    finally:
        for repo in made:
            await repo.close()


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, Base.metadata))


async def _tables_and_version(repo: SqlMetadataRepo) -> tuple[set[str], str | None]:
    async with repo.engine.connect() as conn:
        tables = await conn.run_sync(
            lambda c: set(c.dialect.get_table_names(c, schema=None))  # the namespace
        )
        version = await conn.run_sync(
            lambda c: MigrationContext.configure(c).get_current_revision()
        )
    return tables, version


async def test_migrations_produce_exactly_the_models_schema(make_repo: RepoFactory) -> None:
    repo = make_repo()
    await repo.start()
    async with repo.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []
    assert await _tables_and_version(repo) == (TABLES, HEAD)
    await repo.start()  # nothing pending: a no-op
    assert await _tables_and_version(repo) == (TABLES, HEAD)


async def test_repositories_starting_together_on_an_empty_database_all_come_up(
    make_repo: RepoFactory,
) -> None:
    repos = [make_repo() for _ in range(4)]
    await asyncio.gather(*(repo.start() for repo in repos))
    await repos[0].insert(info("s"), replace=False)
    assert all([await repo.get("s") is not None for repo in repos])


def _pre_migration_schema(with_tus: bool) -> MetaData:
    """The table as the code before migrations made it with create_all: before
    the tus column existed, or after (the column added by create_all itself)."""
    from sqlalchemy import Boolean, false

    metadata = MetaData()
    columns = [
        Column("id", String(200), primary_key=True),
        Column("key", String(40), nullable=False),
        Column("metadata", JSON, nullable=False),
        Column("state", String(16), nullable=False),
        Column("size", BigInteger, nullable=False),
        Column("sha256", String(64), nullable=True),
        Column("created_us", BigInteger, nullable=False),
        Column("updated_us", BigInteger, nullable=False),
        Column("finished_us", BigInteger, nullable=True),
        Column("expected_size", BigInteger, nullable=True),
    ]
    if with_tus:
        columns.append(Column("tus", Boolean, nullable=False, server_default=false()))
    table = Table("streams", metadata, *columns)
    Index("ix_streams_created", table.c.created_us, table.c.id)
    Index("ix_streams_state_created", table.c.state, table.c.created_us, table.c.id)
    Index("ix_streams_finished", table.c.finished_us)
    return metadata


# before-tus: made before the tus column; old-alter: then given it by the
# earlier code's ALTER TABLE; with-tus: made by create_all with the column.
@pytest.mark.parametrize("variant", ["before-tus", "old-alter", "with-tus"])
async def test_a_database_made_before_migrations_is_adopted_and_keeps_its_rows(
    make_repo: RepoFactory, variant: str
) -> None:
    old = make_repo()
    async with old.engine.begin() as conn:
        if old.engine.dialect.name == "postgresql":
            await conn.execute(text(f'CREATE SCHEMA "{old.namespace}"'))
        await conn.run_sync(_pre_migration_schema(variant == "with-tus").create_all)
        if variant == "old-alter":
            await conn.execute(
                text("ALTER TABLE streams ADD COLUMN tus BOOLEAN NOT NULL DEFAULT false")
            )
        await conn.execute(
            text(
                "INSERT INTO streams (id, key, metadata, state, size, sha256, created_us,"
                " updated_us, finished_us, expected_size) VALUES ('old', 'k1', '{\"a\": 1}',"
                " 'complete', 5, NULL, 1000, 2000, 2000, NULL)"
            )
        )
    assert (await _tables_and_version(old))[1] is None

    repo = make_repo()
    await repo.start()
    assert await _tables_and_version(repo) == (TABLES, HEAD)
    async with repo.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []
    row = await repo.get("old")
    assert row is not None
    assert (row.state, row.size, row.metadata, row.tus) == (
        StreamState.COMPLETE,
        5,
        {"a": 1},
        False,
    )
    await repo.insert(info("new", tus=True), replace=False)
    new = await repo.get("new")
    assert new is not None and new.tus
    assert BASELINE == "0001"
