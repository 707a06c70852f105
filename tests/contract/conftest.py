"""Every MetadataRepo and Hub implementation present, behind one fixture each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.storage.base import Hub, MetadataRepo
from app.storage.memory_hub import MemoryHub
from app.storage.metadata import SqlMetadataRepo
from tests.pg import PG_URL, new_namespace, require_pg
from tests.unit.fakes import MemoryMetadataRepo


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def repo(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MetadataRepo]:
    implementation: MetadataRepo
    if request.param == "memory":
        implementation = MemoryMetadataRepo()
    elif request.param == "sqlite":
        implementation = SqlMetadataRepo(f"sqlite+aiosqlite:///{tmp_path / 'weft.db'}")
    else:
        require_pg()
        implementation = SqlMetadataRepo(PG_URL, namespace=new_namespace())
    await implementation.start()
    try:
        yield implementation
    finally:
        await implementation.close()


@pytest.fixture(params=["memory"])
async def hub(request: pytest.FixtureRequest) -> AsyncIterator[Hub]:
    implementation = MemoryHub()
    try:
        yield implementation
    finally:
        await implementation.close()
