"""In-memory fakes of the storage Protocols (app/storage/base.py) for unit tests.

They keep the contracts' observable behaviour (append-only bytes per key, rows
per id and incarnation key) and nothing else, so the domain can be driven
without files or a database.
"""

from __future__ import annotations

import builtins
import errno
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from app.config import Settings
from app.errors import InsufficientStorage, StreamExists, StreamNotFound, WeftError
from app.storage.base import ListQuery
from app.storage.memory_hub import MemoryHub
from app.streams.models import Link, StreamInfo, StreamState, metadata_text, to_micros, utcnow
from app.streams.service import StreamService


class MemorySegmentWriter:
    def __init__(self, store: MemorySegmentStore, key: str) -> None:
        self._store = store
        self._key = key
        self.size = len(store.blobs[key])
        self.syncs = 0
        self.closed = False

    async def append(self, data: bytes) -> int:
        blob = self._store.blobs.get(self._key)
        if blob is not None:  # like a write to an unlinked file: accepted, then lost
            blob += data
        self.size += len(data)
        return self.size

    async def sync(self) -> None:
        self.syncs += 1

    async def close(self) -> None:
        self.closed = True


class MemorySegmentStore:
    def __init__(self) -> None:
        self.blobs: dict[str, bytearray] = {}
        self.finished: set[str] = set()  # keys finish() was called for

    async def create(self, key: str) -> None:
        self.blobs[key] = bytearray()
        self.finished.discard(key)

    async def open_writer(self, key: str) -> MemorySegmentWriter:
        if key not in self.blobs:
            raise StreamNotFound(key)
        return MemorySegmentWriter(self, key)

    async def read(self, key: str, offset: int, limit: int) -> bytes:
        blob = self.blobs.get(key)
        if blob is None:
            return b""
        return bytes(blob[offset : offset + limit])

    async def size(self, key: str) -> int:
        if key not in self.blobs:
            raise StreamNotFound(key)
        return len(self.blobs[key])

    async def trim(self, key: str, size: int) -> None:
        del self.blobs[key][size:]

    async def delete(self, key: str) -> None:
        self.blobs.pop(key, None)

    async def hand_off(self, key: str) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def finish(self, key: str) -> None:
        self.finished.add(key)

    async def unfinished(self) -> list[str]:
        return [key for key in self.blobs if key not in self.finished]

    async def check(self) -> None:
        return None


def _micros(info: StreamInfo) -> int:
    return to_micros(info.created_at)


class MemoryMetadataRepo:
    def __init__(self) -> None:
        self.rows: dict[str, StreamInfo] = {}
        self.secrets: dict[str, str] = {}
        self.link_rows: dict[str, Link] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def insert(self, info: StreamInfo, *, replace: bool) -> StreamInfo | None:
        old = self.rows.get(info.id)
        if old is not None and not replace:
            raise StreamExists(info.id)
        self.rows[info.id] = info
        return old

    async def get(self, stream_id: str) -> StreamInfo | None:
        return self.rows.get(stream_id)

    async def update(self, info: StreamInfo) -> bool:
        row = self.rows.get(info.id)
        if row is None or row.key != info.key or row.state is not StreamState.LIVE:
            return False
        self.rows[info.id] = row.with_changes(
            state=info.state,
            size=info.size,
            sha256=info.sha256,
            updated_at=info.updated_at,
            finished_at=info.finished_at,
            expected_size=info.expected_size,
        )
        return True

    async def checkpoint(self, sizes: list[tuple[str, str, int]]) -> None:
        for stream_id, key, size in sizes:
            row = self.rows.get(stream_id)
            if row is not None and row.key == key and row.state is StreamState.LIVE:
                self.rows[stream_id] = row.with_changes(size=size, updated_at=utcnow())

    async def delete(self, stream_id: str, key: str | None = None) -> StreamInfo | None:
        row = self.rows.get(stream_id)
        if row is None or (key is not None and row.key != key):
            return None
        return self.rows.pop(stream_id)

    async def page(self, query: ListQuery) -> list[StreamInfo]:
        rows = sorted(self.rows.values(), key=lambda i: (_micros(i), i.id), reverse=True)
        out = []
        for info in rows:
            if query.state is not None and info.state is not query.state:
                continue
            if query.prefix and not info.id.startswith(query.prefix):
                continue
            if not all(
                metadata_text(info.metadata.get(name)) == value and name in info.metadata
                for name, values in query.meta.items()
                for value in values
            ):
                continue
            if query.before is not None and (_micros(info), info.id) >= (
                to_micros(query.before[0]),
                query.before[1],
            ):
                continue
            out.append(info)
        return out[: query.limit]

    async def by_keys(self, keys: builtins.list[str]) -> builtins.list[StreamInfo]:
        return [info for info in self.rows.values() if info.key in keys]

    async def live(self) -> builtins.list[StreamInfo]:
        return [info for info in self.rows.values() if info.state is StreamState.LIVE]

    async def for_build(self, build_id: str) -> builtins.list[StreamInfo]:
        return [
            info
            for info in self.rows.values()
            if ("buildId" in info.metadata and metadata_text(info.metadata["buildId"]) == build_id)
            or info.id.startswith(f"build-{build_id}-")
        ]

    async def finished_before(self, cutoff: datetime, limit: int) -> builtins.list[StreamInfo]:
        finished = [
            info
            for info in self.rows.values()
            if info.finished_at is not None and info.finished_at < cutoff
        ]
        return sorted(finished, key=lambda i: (i.finished_at, i.id))[:limit]

    async def count_by_state(self) -> dict[StreamState, int]:
        counts = Counter(info.state for info in self.rows.values())
        return {state: counts[state] for state in StreamState}

    async def total_size(self) -> int:
        return sum(info.size for info in self.rows.values())

    async def put_link(self, name: str, stream_id: str, now: datetime) -> tuple[Link, bool]:
        old = self.link_rows.get(name)
        link = Link(name, stream_id, old.created_at if old else now, now)
        self.link_rows[name] = link
        return link, old is None

    async def get_link(self, name: str) -> Link | None:
        return self.link_rows.get(name)

    async def links(
        self, *, stream_id: str | None = None, after: str | None = None, limit: int = 100
    ) -> builtins.list[Link]:
        names = sorted(self.link_rows, key=lambda name: name.encode())
        found = [self.link_rows[name] for name in names if after is None or name > after]
        return [link for link in found if stream_id in (None, link.stream_id)][:limit]

    async def delete_link(self, name: str) -> bool:
        return self.link_rows.pop(name, None) is not None

    async def shared_secret(self, name: str, candidate: str) -> str:
        return self.secrets.setdefault(name, candidate)

    async def check(self) -> None:
        return None


@asynccontextmanager
async def running_service(
    store: MemorySegmentStore | None = None,
    repo: MemoryMetadataRepo | None = None,
    **settings: Any,
) -> AsyncIterator[StreamService]:
    """A started StreamService on in-memory fakes and the real in-process hub."""
    settings.setdefault("data_dir", Path("/nonexistent/weft-unit"))
    settings.setdefault("durability", {"fsync": "never"})
    service = StreamService(
        settings=Settings.model_validate(settings),
        store=store or MemorySegmentStore(),
        repo=repo or MemoryMetadataRepo(),
        hub=MemoryHub(),
    )
    await service.start()
    try:
        yield service
    finally:
        await service.close()


async def produce(service: StreamService, stream_id: str | None, *chunks: bytes, **kw: Any) -> str:
    """Create a stream, append chunks and complete it; return its id."""
    info, _ = await service.create(stream_id, kw.pop("metadata", {}), **kw)
    async with service.producer(info.id) as producer:
        for chunk in chunks:
            await producer.append(chunk)
        await producer.complete()
    return info.id


# -- failing on demand (all-or-nothing tests, issue 9) -----------------------------------


class FailingMetadataRepo(MemoryMetadataRepo):
    """A repository whose writes fail on demand, as a full or broken database
    would: a failed write changes nothing (a transaction that rolled back).

    ``fail("update")`` fails the next update (``times`` in a row); with ``full``
    set every write fails with InsufficientStorage until it is cleared."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False
        self.failures: dict[str, list[WeftError]] = {}
        self.attempts: Counter[str] = Counter()

    def fail(self, method: str, error: WeftError | None = None, *, times: int = 1) -> None:
        error = error or InsufficientStorage("The database is out of disk space.")
        self.failures.setdefault(method, []).extend([error] * times)

    def _write(self, method: str) -> None:
        self.attempts[method] += 1
        pending = self.failures.get(method)
        if pending:
            raise pending.pop(0)
        if self.full:
            raise InsufficientStorage("The database is out of disk space.")

    async def insert(self, info: StreamInfo, *, replace: bool) -> StreamInfo | None:
        self._write("insert")
        return await super().insert(info, replace=replace)

    async def update(self, info: StreamInfo) -> bool:
        self._write("update")
        return await super().update(info)

    async def checkpoint(self, sizes: list[tuple[str, str, int]]) -> None:
        self._write("checkpoint")
        await super().checkpoint(sizes)

    async def delete(self, stream_id: str, key: str | None = None) -> StreamInfo | None:
        self._write("delete")
        return await super().delete(stream_id, key)


class FullDiskSegmentWriter(MemorySegmentWriter):
    """Stores what fits in the store's ``room``, then fails like a full disk."""

    def __init__(self, store: FullDiskSegmentStore, key: str) -> None:
        super().__init__(store, key)
        self._disk = store

    async def append(self, data: bytes) -> int:
        fits = data[: max(self._disk.room, 0)]
        self._disk.room -= len(fits)
        await super().append(fits)
        if len(fits) < len(data):
            raise OSError(errno.ENOSPC, "No space left on device", "/data/segments/x/00000000")
        return self.size

    async def sync(self) -> None:
        if self._disk.sync_error is not None:
            raise self._disk.sync_error
        await super().sync()


class FullDiskSegmentStore(MemorySegmentStore):
    """A segment store on a disk with ``room`` bytes left (None: unlimited)."""

    def __init__(self, room: int | None = None) -> None:
        super().__init__()
        self.room = room if room is not None else 1 << 62
        self.sync_error: OSError | None = None

    async def open_writer(self, key: str) -> FullDiskSegmentWriter:
        if key not in self.blobs:
            raise StreamNotFound(key)
        return FullDiskSegmentWriter(self, key)


class FakeSpace:
    """A SpaceGuard (app/storage/space.py) with the free space set by the test.
    Releasing the reserve clears ``repo.full``, as freeing 4 MiB would."""

    def __init__(
        self, *, free: int = 1 << 40, min_free: int = 0, repo: FailingMetadataRepo | None = None
    ) -> None:
        self.free = free
        self.min_free = min_free
        self.repo = repo
        self.reserved = True
        self.released = 0
        self.consumed_bytes = 0

    def require(self) -> None:
        if self.min_free and self.free < self.min_free:
            raise InsufficientStorage("The disk is below limits.min_free_bytes.")

    def consumed(self, size: int) -> None:
        self.consumed_bytes += size

    def release_reserve(self) -> bool:
        if not self.reserved:
            return False
        self.reserved = False
        self.released += 1
        if self.repo is not None:
            self.repo.full = False
        return True

    def refresh(self) -> None:
        return None
