"""The stream lifecycle: create, append, complete, abandon, replace, delete, recover.

The service owns every rule about streams. Live streams written by this process
are kept in ``_live``: their size and digest advance per chunk in memory, and
the database hears of them only on create, state change, delete and a size
checkpoint at most every ``checkpoint_interval`` seconds (DESIGN property 3).

Every state change is all or nothing (SPEC §7): the database write comes first
and memory (flags, writer, timer, ``_live``) changes only once it succeeded, so
a failed write (503, 507) leaves the stream as it was and the request can be
retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from app.config import Settings
from app.errors import (
    InsufficientStorage,
    InvalidInput,
    OffsetMismatch,
    RangeNotSatisfiable,
    StreamBusy,
    StreamNotFound,
    StreamNotLive,
    TooLarge,
    WeftError,
)
from app.metrics import Metrics
from app.storage.base import Hub, ListQuery, MetadataRepo, SegmentStore, SegmentWriter
from app.storage.space import NoSpaceGuard, SpaceGuard, disk_errors
from app.streams.events import EventLog
from app.streams.listing import encode_cursor
from app.streams.models import (
    EventKind,
    HubEvent,
    StreamInfo,
    StreamState,
    new_storage_key,
    new_stream_id,
    utcnow,
    validate_stream_id,
)
from app.streams.reader import StreamReader
from app.streams.upkeep import every, recover_live

log = logging.getLogger("weft.streams")
ABANDON_RETRY = 10.0  # seconds before a failed abandonment is tried again


@dataclass(eq=False)
class _Live:
    """A live stream this process is responsible for."""

    info: StreamInfo
    size: int
    hasher: Any
    writer: SegmentWriter | None = None
    producing: bool = False
    gone: bool = False  # deleted, replaced or finished: producers must stop
    ended: StreamState | None = None  # the state it finished in, if it did
    abandon_timer: asyncio.TimerHandle | None = None
    dirty: bool = False  # appended since the last fsync
    expires_at: datetime | None = None  # when the abandon timer fires
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # state transitions


class Producer:
    """The one producer attached to a live stream (see StreamService.producer)."""

    def __init__(self, service: StreamService, live: _Live) -> None:
        self._service = service
        self._live = live

    @property
    def stream_id(self) -> str:
        return self._live.info.id

    @property
    def size(self) -> int:
        return self._live.size

    async def append(self, data: bytes) -> int:
        """Store data, publish the new size, return it. Raises StreamNotFound when
        the stream was deleted or replaced meanwhile, TooLarge after storing
        up to limits.stream_bytes (the stream is then complete), and
        InsufficientStorage below limits.min_free_bytes or on a full disk (the
        stream stays live with what was stored before)."""
        return await self._service._append(self._live, data)

    async def complete(self) -> StreamInfo:
        return await self._service._finish(self._live, StreamState.COMPLETE)


class StreamService:
    def __init__(
        self,
        *,
        settings: Settings,
        store: SegmentStore,
        repo: MetadataRepo,
        hub: Hub,
        metrics: Metrics | None = None,
        space: SpaceGuard | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.repo = repo
        self.hub = hub
        self.space = space or NoSpaceGuard()
        self.metrics = metrics or Metrics()
        self.events = EventLog()
        self._live: dict[str, _Live] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._unsaved: set[_Live] = set()  # size changed since the last checkpoint

    # -- start and stop ---------------------------------------------------------

    async def start(self) -> None:
        self.space.refresh()
        await self.store.start()
        await self.repo.start()
        await self.events.start(self.hub)
        try:
            await self.recover()
        except InsufficientStorage:
            # Started on a full disk: recovery's row updates need a little room.
            if not self.space.release_reserve():
                raise
            await self.recover()
        periodic: list[tuple[float, Callable[[], Awaitable[None]]]] = [
            (self.settings.checkpoint_interval, self._save_sizes),
            (1.0, self._keep_reserve),
        ]
        if self.settings.durability.fsync == "interval":
            periodic.append((self.settings.durability.interval, self._sync_dirty))
        keep = self.settings.retention.complete_after
        if keep is not None:
            periodic.append((min(keep / 2, 60.0), self._delete_expired))
        self._background = [asyncio.create_task(every(s, work)) for s, work in periodic]

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        await self.events.close()
        for live in list(self._live.values()):
            if live.abandon_timer is not None:
                live.abandon_timer.cancel()
            await self._checkpoint(live)
            await self._close_writer(live, sync=self.settings.durability.fsync != "never")
        self._live.clear()
        for task in list(self._tasks):
            task.cancel()
        await self.hub.close()
        await self.store.close()
        await self.repo.close()

    async def recover(self) -> None:
        for item in await recover_live(self.store, self.repo, self.metrics):
            live = _Live(info=item.info, size=item.info.size, hasher=item.hasher)
            self._live[live.info.id] = live
            self._arm_abandon(live)

    # -- create -------------------------------------------------------------------

    async def create(
        self,
        stream_id: str | None,
        metadata: dict[str, Any],
        *,
        force: bool = False,
        expected_size: int | None = None,
        tus: bool = False,
    ) -> tuple[StreamInfo, bool]:
        """Create a live stream; return it and whether an old one was replaced.
        With expected_size the stream completes once it holds that many bytes;
        tus marks an upload made through /files/. Raises InvalidInput for a bad
        id, StreamExists when taken without force, InsufficientStorage (below
        limits.min_free_bytes, disk full) and StorageUnavailable; on any error
        nothing was created or replaced."""
        stream_id = validate_stream_id(stream_id) if stream_id is not None else new_stream_id()
        self.space.require()
        now = utcnow()
        info = StreamInfo(
            id=stream_id,
            key=new_storage_key(),
            metadata=metadata,
            state=StreamState.LIVE,
            size=0,
            sha256=None,
            created_at=now,
            updated_at=now,
            expected_size=expected_size,
            tus=tus,
        )
        with disk_errors():
            await self.store.create(info.key)
        try:
            old = await self.repo.insert(info, replace=force)
        except BaseException:
            await self.store.delete(info.key)
            raise
        if old is not None:
            await self._discard(old)
        live = _Live(info=info, size=0, hasher=hashlib.sha256())
        self._live[stream_id] = live
        self._arm_abandon(live)
        self.hub.publish(HubEvent(EventKind.CREATED, stream_id, info.key, 0, info.state, info))
        log.info("stream_created stream_id=%s replaced=%s", stream_id, old is not None)
        return info, old is not None

    # -- produce ------------------------------------------------------------------

    @asynccontextmanager
    async def producer(
        self, stream_id: str, *, offset: int | None = None
    ) -> AsyncIterator[Producer]:
        """Attach the one producer of a live stream. With offset, the stream's size
        must equal it (resume). Raises StreamNotFound, StreamNotLive, StreamBusy
        or OffsetMismatch. A stream that already holds its declared size (its
        completion failed earlier) is completed on attach."""
        live = await self._require_live(stream_id)
        async with live.lock:  # not while a state change is being written
            if live.gone:
                raise _gone(live)
            if live.producing:
                raise StreamBusy(stream_id)
            if offset is not None and offset != live.size:
                raise OffsetMismatch(stream_id, live.size)
            live.producing = True
        self.metrics.live_producers.inc()
        if live.abandon_timer is not None:
            live.abandon_timer.cancel()
            live.abandon_timer = None
        try:
            if live.info.expected_size == live.size:
                # It holds its declared size but an earlier completion failed: finish it now.
                await self._finish(live, StreamState.COMPLETE)
            yield Producer(self, live)
        finally:
            live.producing = False
            self.metrics.live_producers.dec()
            if not live.gone:
                self._arm_abandon(live)
                await self._checkpoint(live)

    def check_fits(self, end: int | None) -> None:
        """Refuse up front (413) a request that would take a stream past
        limits.stream_bytes; a body of unknown length is cut there by _append."""
        limit = self.settings.limits.stream_bytes
        if limit is not None and end is not None and end > limit:
            raise TooLarge(f"The stream would exceed the size limit of {limit} bytes.")

    async def declare_size(self, stream_id: str, size: int) -> StreamInfo:
        """Fix the total size of a live stream created without one (tus
        creation-defer-length). Raises InvalidInput when it is already declared
        differently or is smaller than what is stored."""
        live = await self._require_live(stream_id)
        declared = live.info.expected_size
        if declared is not None and declared != size:
            raise InvalidInput(f"The stream's size is already declared as {declared} bytes.")
        if size < live.size:
            raise InvalidInput(f"The stream already holds {live.size} bytes.")
        if live.size == size:  # declared and completed in one write
            return await self._finish(live, StreamState.COMPLETE, expected_size=size)
        changed = live.info.with_changes(expected_size=size)
        await self.repo.update(changed.with_changes(size=live.size, updated_at=utcnow()))
        live.info = changed
        return changed.with_changes(size=live.size)

    def expires_at(self, stream_id: str) -> datetime | None:
        """When an idle live stream will be abandoned, or None (producing, or not live here)."""
        live = self._live.get(stream_id)
        return live.expires_at if live is not None and not live.producing else None

    async def _require_live(self, stream_id: str) -> _Live:
        validate_stream_id(stream_id)
        live = self._live.get(stream_id)
        if live is not None:
            return live
        info = await self.repo.get(stream_id)
        if info is None:
            raise StreamNotFound(stream_id)
        raise StreamNotLive(stream_id, info.state.value)

    async def _append(self, live: _Live, data: bytes) -> int:
        if live.gone:
            if live.ended is not None:
                raise StreamNotLive(live.info.id, live.ended.value)
            raise StreamNotFound(live.info.id)
        expected = live.info.expected_size
        if expected is not None and live.size + len(data) > expected:
            raise InvalidInput(
                f"The data would extend the stream past its declared size of {expected} bytes."
            )
        limit = self.settings.limits.stream_bytes
        over = limit is not None and live.size + len(data) > limit
        if over:
            assert limit is not None
            data = data[: limit - live.size]
        if data:
            self.space.require()  # 507 below limits.min_free_bytes; the stream stays live
            if live.writer is None:
                with disk_errors():
                    live.writer = await self.store.open_writer(live.info.key)
            writer, before = live.writer, live.size
            try:
                with disk_errors():  # ENOSPC: 507, the stream stays live with what fitted
                    live.dirty = True
                    await writer.append(data)
                    if self.settings.durability.fsync == "always":
                        # The size is published only after the sync: a byte reported in
                        # Upload-Offset then survives a crash of the machine.
                        await writer.sync()
                        live.dirty = False
            finally:
                # Keep and publish what was written even when the write failed part-way.
                self._stored(live, data, writer.size - before)
        if expected is not None and live.size == expected:
            await self._finish(live, StreamState.COMPLETE)
        if over:
            await self._finish(live, StreamState.COMPLETE)
            raise TooLarge(f"The stream reached the size limit of {limit} bytes and was completed.")
        return live.size

    def _stored(self, live: _Live, data: bytes, stored: int) -> None:
        if stored <= 0:
            return
        live.hasher.update(memoryview(data)[:stored])
        live.size += stored
        self.space.consumed(stored)
        self.metrics.bytes_in.inc(stored)
        self.hub.publish(HubEvent(EventKind.PROGRESS, live.info.id, live.info.key, live.size))
        self._unsaved.add(live)

    # -- finish, abandon, delete ------------------------------------------------

    async def _finish(
        self, live: _Live, state: StreamState, *, expected_size: int | None = None
    ) -> StreamInfo:
        """Complete or abandon a live stream. The bytes are synced and the row
        written before anything in memory changes: when either fails (503, 507)
        the stream is still live with its producer, writer and timer, and the
        same request can finish it later."""
        async with live.lock:
            if live.gone:
                current = await self.repo.get(live.info.id)
                if current is None or current.key != live.info.key:
                    raise StreamNotFound(live.info.id)
                return current
            if state is StreamState.ABANDONED and live.producing:
                return live.info.with_changes(size=live.size)  # its producer came back
            if live.writer is not None and live.dirty and self.settings.durability.fsync != "never":
                with disk_errors():
                    await live.writer.sync()
                live.dirty = False
            now = utcnow()
            info = live.info.with_changes(
                state=state,
                size=live.size,
                sha256=live.hasher.hexdigest(),
                updated_at=now,
                finished_at=now,
            )
            if expected_size is not None:
                info = info.with_changes(expected_size=expected_size)
            await self.repo.update(info)
            if live.gone:  # deleted or replaced while the row was written
                raise StreamNotFound(live.info.id)
            # Written: from here on the transition cannot fail.
            live.gone, live.ended, live.info = True, state, info
            if live.abandon_timer is not None:
                live.abandon_timer.cancel()
                live.abandon_timer = None
            await self._close_writer(live, sync=False)
            await self.store.finish(info.key)
            if self._live.get(info.id) is live:
                del self._live[info.id]
            kind = EventKind.COMPLETED if state is StreamState.COMPLETE else EventKind.ABANDONED
            self.hub.publish(HubEvent(kind, info.id, info.key, info.size, state, info))
            log.info("stream_%s stream_id=%s size=%d", kind.value, info.id, info.size)
            return info

    def _arm_abandon(self, live: _Live, delay: float | None = None) -> None:
        if live.abandon_timer is not None:
            live.abandon_timer.cancel()
        loop = asyncio.get_running_loop()
        seconds = self.settings.abandon_after if delay is None else delay
        live.expires_at = utcnow() + timedelta(seconds=seconds)
        # The coroutine is made only when the timer fires: a cancelled timer then
        # leaves no never-awaited coroutine behind.
        live.abandon_timer = loop.call_later(seconds, lambda: self._spawn(self._abandon(live)))

    async def _abandon(self, live: _Live) -> None:
        if live.producing or live.gone:
            return
        # A stream that holds its declared size only missed its completion (a failed write).
        full = live.info.expected_size == live.size
        try:
            await self._finish(live, StreamState.COMPLETE if full else StreamState.ABANDONED)
        except WeftError as exc:
            log.warning("abandon_failed stream_id=%s error=%s", live.info.id, exc.message)
            if not live.gone and not live.producing:
                self._arm_abandon(live, min(ABANDON_RETRY, self.settings.abandon_after))

    async def delete(self, stream_id: str) -> StreamInfo:
        """Remove a stream's row and bytes and end its readers. Raises
        StreamNotFound; InsufficientStorage or StorageUnavailable when the row
        could not be removed (the stream is then untouched)."""
        removed = await self._delete_row(stream_id)
        if removed is None:
            raise StreamNotFound(stream_id)
        await self._discard(removed)
        return removed

    async def delete_build(self, build_id: str) -> list[str]:
        deleted = []
        for info in await self.repo.for_build(build_id):
            if await self._delete_row(info.id, info.key) is not None:
                await self._discard(info)
                deleted.append(info.id)
        return deleted

    async def _delete_row(self, stream_id: str, key: str | None = None) -> StreamInfo | None:
        """repo.delete, also on a full disk: when the database has no room for
        the journal of a DELETE, the reserve file is freed and it is tried again."""
        try:
            return await self.repo.delete(stream_id, key)
        except InsufficientStorage:
            if not self.space.release_reserve():
                raise
            log.warning("delete_used_space_reserve stream_id=%s", stream_id)
            return await self.repo.delete(stream_id, key)

    async def _discard(self, info: StreamInfo) -> None:
        """Forget an incarnation whose row is already gone: stop its producer,
        end its readers, remove its bytes."""
        live = self._live.get(info.id)
        if live is not None and live.info.key == info.key:
            live.gone = True
            if live.abandon_timer is not None:
                live.abandon_timer.cancel()
            del self._live[info.id]
            await self._close_writer(live, sync=False)
        self.hub.publish(HubEvent(EventKind.DELETED, info.id, info.key, info.size, None, info))
        await self.store.delete(info.key)
        self.space.refresh()
        log.info("stream_deleted stream_id=%s", info.id)

    # -- read ---------------------------------------------------------------------

    async def info(self, stream_id: str) -> StreamInfo:
        """The stream now, with the in-memory size of a live one. Raises StreamNotFound."""
        validate_stream_id(stream_id)
        live = self._live.get(stream_id)
        if live is not None:
            return live.info.with_changes(size=live.size)
        info = await self.repo.get(stream_id)
        if info is None:
            raise StreamNotFound(stream_id)
        return info

    async def find(self, stream_id: str) -> StreamInfo | None:
        """info, or None for a stream that does not exist."""
        try:
            return await self.info(stream_id)
        except StreamNotFound:
            return None

    async def list_page(self, query: ListQuery) -> tuple[list[StreamInfo], str | None]:
        """One page, newest first, and the cursor of the next page (None at the end)."""
        rows = await self.repo.page(replace(query, limit=query.limit + 1))
        page = [self._with_live_size(info) for info in rows[: query.limit]]
        more = len(rows) > query.limit
        return page, encode_cursor(page[-1]) if more and page else None

    async def count_by_state(self) -> dict[StreamState, int]:
        return await self.repo.count_by_state()

    def _with_live_size(self, info: StreamInfo) -> StreamInfo:
        live = self._live.get(info.id)
        if live is not None and live.info.key == info.key:
            return info.with_changes(size=live.size)
        return info

    async def position(self, stream_id: str, key: str) -> tuple[int, StreamState] | None:
        live = self._live.get(stream_id)
        if live is not None and live.info.key == key:
            return live.size, StreamState.LIVE
        info = await self.repo.get(stream_id)
        if info is None or info.key != key:
            return None
        return info.size, info.state

    async def reader(self, stream_id: str, *, offset: int = 0, tail: bool = True) -> StreamReader:
        """A reader from offset. A finished stream, or tail=False, gives a fixed
        end; a live one tails until it leaves live. Raises StreamNotFound, and
        RangeNotSatisfiable for an offset past the end of a fixed-end read."""
        info = await self.info(stream_id)
        tailing = tail and info.state is StreamState.LIVE
        if not tailing and offset > info.size:
            raise RangeNotSatisfiable(
                info.size, f"Offset {offset} is beyond the stream's {info.size} bytes."
            )
        timeout = self.settings.tail_timeout or None
        return StreamReader(
            info=info,
            start=offset,
            end=None if tailing else info.size,
            store=self.store,
            hub=self.hub,
            position=self.position,
            tail_timeout=timeout,
            metrics=self.metrics,
        )

    def live_ids(self) -> list[str]:
        return list(self._live)

    # -- background work ----------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_failed", exc_info=task.exception())

    async def _checkpoint(self, live: _Live) -> None:
        """Best effort: the segment files, not the checkpoint, say what is stored."""
        self._unsaved.discard(live)
        if live.gone:
            return
        try:
            await self.repo.checkpoint([(live.info.id, live.info.key, live.size)])
        except WeftError as exc:
            self._unsaved.add(live)  # the next round tries again
            log.warning("checkpoint_failed stream_id=%s error=%s", live.info.id, exc.message)

    async def _save_sizes(self) -> None:
        """One transaction for every stream written since the last checkpoint:
        with a thousand live streams, a row update per stream per second would
        cost more than all their bytes."""
        batch, self._unsaved = self._unsaved, set()
        entries = [(live.info.id, live.info.key, live.size) for live in batch if not live.gone]
        if entries:
            try:
                await self.repo.checkpoint(entries)
            except WeftError as exc:
                self._unsaved |= batch  # kept for the next round
                log.warning("checkpoint_failed streams=%d error=%s", len(entries), exc.message)

    async def _keep_reserve(self) -> None:
        self.space.refresh()

    async def _close_writer(self, live: _Live, *, sync: bool) -> None:
        writer, live.writer = live.writer, None
        if writer is None:
            return
        if sync and live.dirty:
            await writer.sync()
        await writer.close()

    async def _delete_expired(self) -> None:
        """Delete finished streams older than retention.complete_after, as DELETE would."""
        keep = self.settings.retention.complete_after
        assert keep is not None
        cutoff = utcnow() - timedelta(seconds=keep)
        for info in await self.repo.finished_before(cutoff, limit=500):
            try:
                removed = await self._delete_row(info.id, info.key)
            except WeftError as exc:  # the next round tries again
                log.warning("retention_failed stream_id=%s error=%s", info.id, exc.message)
                return
            if removed is not None:
                await self._discard(info)
                log.info("stream_expired stream_id=%s", info.id)

    async def _sync_dirty(self) -> None:
        """durability.fsync interval: what was written since the last round reaches the disk."""
        for live in list(self._live.values()):
            if live.dirty and live.writer is not None:
                live.dirty = False
                await live.writer.sync()


def _gone(live: _Live) -> WeftError:
    """Why a producer may no longer append: finished, or deleted or replaced."""
    if live.ended is not None:
        return StreamNotLive(live.info.id, live.ended.value)
    return StreamNotFound(live.info.id)
