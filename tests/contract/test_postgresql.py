"""What only PostgreSQL has: namespaces (schemas), its error codes, its absence."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.errors import NotReady, StorageUnavailable
from app.storage.metadata import SqlMetadataRepo, _is_full
from tests.contract.test_metadata_contract import info
from tests.pg import PG_URL, new_namespace, require_pg


@pytest.fixture
async def pg_repos() -> AsyncIterator[tuple[SqlMetadataRepo, SqlMetadataRepo]]:
    require_pg()
    first = SqlMetadataRepo(PG_URL, namespace=new_namespace())
    second = SqlMetadataRepo(PG_URL, namespace=new_namespace())
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def test_namespaces_on_one_database_do_not_see_each_other(
    pg_repos: tuple[SqlMetadataRepo, SqlMetadataRepo],
) -> None:
    first, second = pg_repos
    await first.insert(info("same-id", metadata={"n": 1}), replace=False)
    await second.insert(info("same-id", metadata={"n": 2}), replace=False)
    one, two = await first.get("same-id"), await second.get("same-id")
    assert one is not None and one.metadata == {"n": 1}
    assert two is not None and two.metadata == {"n": 2}
    async with first.engine.connect() as conn:
        schema = (await conn.execute(text("SELECT current_schema()"))).scalar()
    assert schema == first.namespace


async def test_postgresql_errors_carry_the_sqlstate_the_translation_reads(
    pg_repos: tuple[SqlMetadataRepo, SqlMetadataRepo],
) -> None:
    first, _ = pg_repos
    async with first.engine.connect() as conn:
        with pytest.raises(DBAPIError) as caught:
            await conn.execute(text("SELECT 1 / 0"))
    assert getattr(caught.value.orig, "sqlstate", None) == "22012"
    assert not _is_full(caught.value)


async def test_an_unreachable_server_is_503_and_not_ready() -> None:
    repo = SqlMetadataRepo("postgresql+asyncpg://postgres@127.0.0.1:9/test", namespace="weft")
    try:
        with pytest.raises(StorageUnavailable):
            await repo.get("x")
        with pytest.raises(StorageUnavailable):
            await repo.insert(info("x"), replace=False)
        with pytest.raises(NotReady):
            await repo.check()
    finally:
        await repo.close()
