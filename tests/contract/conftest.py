"""Every MetadataRepo and Hub implementation present, behind one fixture each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.storage.base import Hub, MetadataRepo
from app.storage.memory_hub import MemoryHub
from app.storage.metadata import SqlMetadataRepo
from app.storage.nats_hub import NatsHub
from tests.nats_env import NATS_URL, drop_streams, require_nats
from tests.nats_env import new_namespace as new_nats_namespace
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


@pytest.fixture(params=["memory", "nats"])
async def hub(request: pytest.FixtureRequest) -> AsyncIterator[Hub]:
    implementation: Hub
    namespace = None
    if request.param == "memory":
        implementation = MemoryHub()
    else:
        require_nats()
        namespace = new_nats_namespace()
        implementation = NatsHub([NATS_URL], namespace, "node-a")
    await implementation.start()
    try:
        yield implementation
    finally:
        await implementation.close()
        if namespace is not None:
            drop_streams(f"{namespace}_events")
