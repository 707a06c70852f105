"""The storage contracts. Implementations translate their own errors into WeftError."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from app.streams.models import HubEvent, StreamInfo, StreamState


class SegmentWriter(Protocol):
    """Appends to one stream's segments. One writer per key at a time (the
    service's producer lock serialises callers)."""

    size: int

    async def append(self, data: bytes) -> int:
        """Store data at the end; return the new size. Once this returns, the
        bytes survive a crash of the process."""

    async def sync(self) -> None:
        """Make everything appended so far survive a crash of the machine."""

    async def close(self) -> None:
        """Release the writer; the stored bytes stay."""


class SegmentStore(Protocol):
    """Append-only bytes per storage key, split into segments of a fixed size."""

    async def start(self) -> None:
        """Connect, and resume work left from before (uploads of a tiered store)."""

    async def close(self) -> None:
        """Stop background work; what is unfinished resumes at the next start."""

    async def finish(self, key: str) -> None:
        """The stream will get no more bytes (complete or abandoned). Never raises."""

    async def create(self, key: str) -> None:
        """Create an empty stream; an existing one under key is emptied."""

    async def open_writer(self, key: str) -> SegmentWriter:
        """A writer positioned at the stored end. Raises StreamNotFound."""

    async def read(self, key: str, offset: int, limit: int) -> bytes | memoryview:
        """Up to limit bytes from offset; empty at the stored end or for a deleted key.
        Raises CorruptBlock when the block at offset fails its checksum (bytes
        before it are returned first); never returns bytes that failed."""

    async def size(self, key: str) -> int:
        """The stored size, from the segments themselves. Raises StreamNotFound."""

    async def trim(self, key: str, size: int) -> None:
        """Cut the stored bytes at size (recovery drops a corrupt end this way)."""

    async def delete(self, key: str) -> None:
        """Remove the stream's bytes; a missing key is not an error."""

    async def check(self) -> None:
        """Raise NotReady when the store cannot be written."""


@dataclass(frozen=True)
class ListQuery:
    state: StreamState | None = None
    prefix: str | None = None
    meta: dict[str, list[str]] = field(default_factory=dict)
    limit: int = 100
    before: tuple[datetime, str] | None = None  # (created_at, id) of the last row seen


class MetadataRepo(Protocol):
    """Stream rows. Calls may come from many tasks; implementations serialise
    writes themselves."""

    async def start(self) -> None:
        """Create the schema if needed."""

    async def close(self) -> None: ...

    async def insert(self, info: StreamInfo, *, replace: bool) -> StreamInfo | None:
        """Insert a new row. With replace, an existing row with the same id is
        removed first and returned; without it, an existing row raises StreamExists."""

    async def get(self, stream_id: str) -> StreamInfo | None: ...

    async def update(self, info: StreamInfo) -> None:
        """Write state, size, digest and times of the row with info.id and info.key;
        a row that was replaced or deleted meanwhile is left alone."""

    async def checkpoint(self, sizes: list[tuple[str, str, int]]) -> None:
        """Record (stream id, key, size) for rows that are still live and still
        that incarnation, in one transaction."""

    async def delete(self, stream_id: str, key: str | None = None) -> StreamInfo | None:
        """Remove the row (only the incarnation key, if given); return what was removed."""

    async def page(self, query: ListQuery) -> list[StreamInfo]:
        """Newest first."""

    async def live(self) -> list[StreamInfo]:
        """Every row in state live (for recovery)."""

    async def for_build(self, build_id: str) -> list[StreamInfo]:
        """Rows whose metadata has buildId == build_id or whose id starts with
        ``build-{build_id}-``."""

    async def finished_before(self, cutoff: datetime, limit: int) -> list[StreamInfo]:
        """Up to limit finished rows whose finished_at is before cutoff, oldest first."""

    async def count_by_state(self) -> dict[StreamState, int]: ...

    async def check(self) -> None:
        """Raise NotReady when the database does not answer."""


class Subscription(Protocol):
    """One stream's latest event. Only the newest matters, so nothing queues."""

    @property
    def latest(self) -> HubEvent | None: ...

    async def wait(self, *, beyond: int, timeout: float | None) -> HubEvent | None:
        """Return the newest event not returned before, once its size is beyond
        ``beyond`` or it is not a progress event; None on timeout."""


class Feed(Protocol):
    """Lifecycle events (created, completed, abandoned, deleted) of every stream, in order."""

    def __aiter__(self) -> AsyncIterator[HubEvent]: ...


class Hub(Protocol):
    """Fan-out of small events. publish never awaits a subscriber."""

    async def start(self) -> None:
        """Connect; raise NotReady naming the backend when it cannot."""

    def publish(self, event: HubEvent) -> None: ...

    def subscribe(self, stream_id: str) -> AbstractAsyncContextManager[Subscription]: ...

    def feed(self) -> AbstractAsyncContextManager[Feed]:
        """Lifecycle events from now on; a subscriber that falls too far behind is
        ended (its iteration stops)."""

    async def check(self) -> None:
        """Raise NotReady when events cannot reach other nodes."""

    async def close(self) -> None: ...
