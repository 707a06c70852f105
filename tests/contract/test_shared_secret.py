"""MetadataRepo.shared_secret: made once by whichever repository comes first,
read back the same by every other one on the database (the share-link
signing key of a cluster, SPEC §12.2)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from app.storage.base import MetadataRepo
from app.storage.metadata import SqlMetadataRepo
from tests.pg import PG_URL, new_namespace, require_pg
from tests.unit.fakes import MemoryMetadataRepo

RepoFactory = Callable[[], MetadataRepo]


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def make_repo(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RepoFactory]:
    """Started repositories on one database, each on an engine of its own (in
    memory: the same object)."""
    url, namespace = f"sqlite+aiosqlite:///{tmp_path / 'weft.db'}", "weft"
    if request.param == "postgresql":
        require_pg()
        url, namespace = PG_URL, new_namespace()
    memory = MemoryMetadataRepo()
    made: list[SqlMetadataRepo] = []

    def make() -> MetadataRepo:
        if request.param == "memory":
            return memory
        made.append(SqlMetadataRepo(url, namespace=namespace))
        return made[-1]

    try:
        yield make
    finally:
        for repo in made:
            await repo.close()


async def test_the_first_value_stored_is_the_one_every_repository_reads(
    make_repo: RepoFactory,
) -> None:
    first, second = make_repo(), make_repo()
    await first.start()
    await second.start()
    assert await first.shared_secret("signing_key", "one") == "one"
    assert await second.shared_secret("signing_key", "two") == "one"
    assert await first.shared_secret("signing_key", "three") == "one"
    assert await second.shared_secret("other", "two") == "two"  # one value per name
    await second.close()
    again = make_repo()  # a restart
    await again.start()
    assert await again.shared_secret("signing_key", "four") == "one"


async def test_repositories_racing_on_an_empty_database_all_read_one_value(
    make_repo: RepoFactory,
) -> None:
    repos = [make_repo() for _ in range(6)]
    await asyncio.gather(*(repo.start() for repo in repos))
    values = await asyncio.gather(
        *(repo.shared_secret("signing_key", f"candidate-{n}") for n, repo in enumerate(repos))
    )
    assert len(set(values)) == 1
    assert values[0].startswith("candidate-")
