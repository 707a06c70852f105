"""The storage contracts. Implementations translate their own errors into WeftError."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from app.streams.models import HubEvent, Link, StreamInfo, StreamState


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

    async def unfinished(self) -> list[str]:
        """The keys start() found with bytes that finish() was never called for:
        live streams, and finished ones whose finish a crash cut off (after the
        database row said so). A store whose finish does nothing returns []."""

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

    async def hand_off(self, key: str) -> None:
        """This node no longer writes the stream (it let go or lost its lease):
        drop a local copy that is only a mirror of shared storage, so that it
        never serves, uploads or resumes from a copy another writer outgrew.
        The only copy of the bytes (a store without a shared tail) stays."""


@runtime_checkable
class SupportsStoredBytes(Protocol):
    """A store that can tell what a stream takes at rest (compressed segments)."""

    async def stored_bytes(self, key: str) -> int:
        """Bytes of the stream's stored segments, raw or compressed; 0 for a
        missing key. Cheap: file sizes or markers, never the bytes themselves."""


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

    async def update(self, info: StreamInfo) -> bool:
        """Write state, size, digest and times of the row with info.id and info.key
        while it is live; return whether it was. A row that was finished,
        replaced or deleted meanwhile (by another node too) is left alone."""

    async def checkpoint(self, sizes: list[tuple[str, str, int]]) -> None:
        """Record (stream id, key, size) for rows that are still live and still
        that incarnation, in one transaction."""

    async def delete(self, stream_id: str, key: str | None = None) -> StreamInfo | None:
        """Remove the row (only the incarnation key, if given); return what was removed."""

    async def page(self, query: ListQuery) -> list[StreamInfo]:
        """Newest first."""

    async def by_keys(self, keys: list[str]) -> list[StreamInfo]:
        """The streams stored under these storage keys (those that still exist)."""

    async def live(self) -> list[StreamInfo]:
        """Every row in state live (for recovery)."""

    async def for_build(self, build_id: str) -> list[StreamInfo]:
        """Rows whose metadata has buildId == build_id or whose id starts with
        ``build-{build_id}-``."""

    async def finished_before(self, cutoff: datetime, limit: int) -> list[StreamInfo]:
        """Up to limit finished rows whose finished_at is before cutoff, oldest first."""

    async def count_by_state(self) -> dict[StreamState, int]: ...

    async def total_size(self) -> int:
        """The sum of every row's size (live rows as of their last checkpoint)."""

    async def put_link(self, name: str, stream_id: str, now: datetime) -> tuple[Link, bool]:
        """Point link name at stream_id (whether that stream exists is the
        caller's business); return the link and whether it was created (False:
        an existing link was repointed, keeping its created_at)."""

    async def get_link(self, name: str) -> Link | None: ...

    async def links(
        self, *, stream_id: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[Link]:
        """Links by name (byte order), those after the name ``after``; only
        those pointing at stream_id, if given."""

    async def delete_link(self, name: str) -> bool:
        """Remove the link; False when there was none."""

    async def shared_secret(self, name: str, candidate: str) -> str:
        """The value stored under name, storing candidate first if there is none:
        every caller, on every node, gets the first value ever stored."""

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


# A node's answer to "let this stream go": True, False, or None (not mine).
ReleaseHandler = Callable[[str, str], Awaitable[bool | None]]


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

    async def serve_releases(self, handler: ReleaseHandler) -> None:
        """Answer other nodes' ask_release with handler(stream id, key): True
        (let go), False (keeps it) or None (not this node's: no answer)."""

    async def ask_release(self, stream_id: str, key: str, node_id: str) -> bool:
        """Ask node_id, which holds the stream's lease, to let it go (its producer
        is idle or gone); True once it did. Bounded: False when it does not answer."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Lease:
    """The right of one node to write one live stream incarnation. epoch grows
    by one at every takeover: it is the fencing token of everything the holder
    writes (rows, tail appends), so a holder that lost its lease, even one that
    is alive but was paused or cut off, can no longer change the stream."""

    stream_id: str
    key: str
    node_id: str
    epoch: int


class LeaseStore(Protocol):
    """Producer leases of live streams. Expiry is judged by the store's own clock
    (the database's, in a cluster), never by the caller's."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def acquire(self, stream_id: str, key: str, node_id: str, ttl: float) -> Lease | None:
        """Take the lease of incarnation key of stream_id for ttl seconds: granted
        when nobody holds it (epoch 1, or the next epoch after a released or
        expired one), or node_id holds it already (renewed, same epoch). None
        while another node holds an unexpired lease. A lease of an older
        incarnation of the same id is replaced."""

    async def renew(self, node_id: str, leases: list[Lease], ttl: float) -> set[str]:
        """Extend every lease in leases that node_id still holds at the same epoch,
        in one statement; return the stream ids it still holds. A lease missing
        from the answer was lost (expired and taken over, or released)."""

    async def release(self, lease: Lease) -> None:
        """Give the lease up (only if still held at lease.epoch): the next acquire
        by any node is granted at once, with the next epoch."""

    async def holder(self, stream_id: str) -> Lease | None:
        """The unexpired lease of stream_id, or None."""

    async def expired(self, limit: int) -> list[Lease]:
        """Up to limit leases that expired without being released, oldest first:
        the live streams of nodes that died (for a sweeper to take over)."""

    async def forget(self, stream_id: str, key: str) -> None:
        """Drop any lease of that incarnation (the stream finished or was deleted)."""


@dataclass(frozen=True)
class OutboxEntry:
    """One post-* webhook delivery waiting in the outbox (README "Webhooks")."""

    row: int  # its place: the entries of one (hook, stream) go out in this order
    delivery_id: str
    hook: str  # the hook's url
    event: str
    stream_id: str
    payload: str  # the stream at the event, JSON as GET /streams/{id} shows it
    created_us: int  # when the event happened, microseconds since the epoch
    attempts: int  # failed attempts so far


class HookOutbox(Protocol):
    """The deliveries MetadataRepo writes with the state changes they report,
    shared by every node on the database. A claim holds an entry for one node
    until it expires (by the database's clock): every entry is held by at most
    one node at a time, and an entry is never claimed while an older one of
    the same hook and stream waits (in flight or failed)."""

    async def claim(self, node_id: str, *, hold: float, limit: int) -> list[OutboxEntry]:
        """Hold up to limit due entries for hold seconds, each the oldest waiting
        one of its (hook, stream) and held by nobody; oldest first."""

    async def delivered(self, entry: OutboxEntry, node_id: str) -> None:
        """Remove the entry (its receiver acknowledged it, or it is given up)."""

    async def retry(self, entry: OutboxEntry, node_id: str, *, delay: float) -> None:
        """Count a failed attempt and let the entry go, due again after delay seconds."""

    async def release(self, node_id: str) -> None:
        """Let go of every claim node_id holds (it starts again, or stops): its
        entries are due at once rather than when the claims expire."""

    async def pending(self) -> int:
        """Entries waiting, on every node."""

    def on_written(self, callback: Callable[[], None]) -> None:
        """Call callback once this node committed new entries (so that its
        deliverer need not wait for its next look)."""
