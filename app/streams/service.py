"""The stream lifecycle: create, append, complete, abandon, replace, delete,
recover, take over.

The service owns every rule about streams. The live streams this node is
responsible for are kept in ``_live``, each under a producer lease
(LeaseStore): their size and digest advance per chunk in memory, and the
database hears of them only on create, state change, delete and a size
checkpoint at most every ``checkpoint_interval`` seconds (DESIGN property 3).
A live stream whose lease is free or expired (its node stopped or died) is
taken over by the first node that needs it: a resume, or the sweeper
(app/streams/sweeper.py, which also abandons idle streams and applies retention).
A resume while another node holds the lease asks that node to let go
(hub.ask_release, tusd's lock exchange): it does when the stream's producer is
gone or idle for ``handoff_idle`` seconds (a half-open connection: its request
is ended), and keeps it (409) while the producer is sending. The same rule
applies to a resume on the holding node itself.

Every state change is all or nothing (SPEC §7): the database write comes first
and memory (producer, writer, deadline, ``_live``) changes only once it
succeeded, so a failed write (503, 507) leaves the stream as it was and the
request can be retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from app.config import Settings
from app.errors import (
    InsufficientStorage,
    InvalidInput,
    LeaseLost,
    NotReady,
    OffsetMismatch,
    ProducerReplaced,
    RangeNotSatisfiable,
    StorageUnavailable,
    StreamBusy,
    StreamNotFound,
    StreamNotLive,
    TooLarge,
    WeftError,
)
from app.metrics import Metrics
from app.storage.base import (
    Hub,
    Lease,
    LeaseStore,
    ListQuery,
    MetadataRepo,
    SegmentStore,
    SegmentWriter,
    SupportsStoredBytes,
)
from app.storage.memory_leases import MemoryLeases
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
from app.streams.quota import INTERVAL as QUOTA_INTERVAL
from app.streams.quota import Quota
from app.streams.reader import StreamReader
from app.streams.sweeper import Sweeper
from app.streams.upkeep import every, finish_interrupted, recover_stream

log = logging.getLogger("weft.streams")
ABANDON_RETRY = 10.0  # seconds before a failed abandonment is tried again
REMOTE_POLL = 1.0  # seconds between position checks of a reader of another node's stream
RECOVER_BUDGET = 1.0  # seconds a live stream's recovery may take while the store is not ready
RECOVER_RETRY = (0.5, 10.0)  # first and longest pause before a deferred recovery is retried
T = TypeVar("T")
HANDOFF_WAIT = 2.0  # seconds an idle producer that was told to stop has to leave
# A pre-create webhook: (stream id, metadata, caller's scopes); raises to refuse.
PreCreate = Callable[[str, dict[str, Any], frozenset[str]], Awaitable[None]]
# Why producers must stop: it finished in that state, was deleted or replaced,
# or this node lost its lease.
Gone = Literal["complete", "abandoned", "deleted", "lost"]


@dataclass(eq=False)
class _Live:
    """A live stream this node holds the lease of."""

    info: StreamInfo
    size: int
    hasher: Any
    lease: Lease
    held_until: float  # loop time up to which the lease is surely ours (last renewal + ttl)
    deadline: datetime  # when the sweeper abandons it if no producer is attached
    writer: SegmentWriter | None = None
    producer: Producer | None = None  # the attached producer session
    gone: Gone | None = None
    dirty: bool = False  # appended since the last fsync
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # state transitions


class Producer:
    """A producer session: the one producer attached to a live stream, from
    StreamService.producer until its context ends."""

    def __init__(self, service: StreamService, live: _Live) -> None:
        self._service = service
        self._live = live
        self._receiver: asyncio.Task[Any] | None = None  # the task in receive(), ended by replace()
        self._appending = False
        self._active = service._clock()  # loop time of the last byte received
        self._waiting = False  # in receive(), for the client's next bytes
        self._replaced = False
        self.left = asyncio.Event()  # set once it detached

    def idle_for(self) -> float:
        """Seconds since its last byte, or 0 while it is not waiting for bytes."""
        return self._service._clock() - self._active if self._waiting else 0.0

    async def receive(self, receive: Callable[[], Awaitable[T]]) -> T:
        """The client's next body message, through this session: a replace()
        meanwhile ends the request with ProducerReplaced (409)."""
        self._waiting = True
        self._receiver = asyncio.current_task()
        try:
            message = await receive()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._replaced and task is not None and task.uncancel() == 0:
                raise ProducerReplaced(self.stream_id) from None
            raise
        finally:
            self._waiting = False
        self._active = self._service._clock()
        return message

    def replace(self) -> bool:
        """End the request while it waits for bytes (never mid-append: the
        stream's size would not follow its store). Whatever the client sends
        from then on is not stored; it resumes from the stored offset."""
        if not self._waiting or self._appending or self._receiver is None or self._replaced:
            return False
        self._replaced = True
        self._receiver.cancel()
        return True

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
        self._appending = True  # replace() waits: an append is never cut short
        try:
            return await self._service._append(self._live, data)
        finally:
            self._appending = False

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
        leases: LeaseStore | None = None,
        node_id: str | None = None,
        pre_create: PreCreate | None = None,
    ) -> None:
        self.settings = settings
        self._pre_create = pre_create
        self.store = store
        self.repo = repo
        self.hub = hub
        self.leases: LeaseStore = leases or MemoryLeases()
        self.node_id = node_id or settings.resolved_node_id
        self.space = space or NoSpaceGuard()
        self.metrics = metrics or Metrics()
        self.events = EventLog()
        self._live: dict[str, _Live] = {}
        self._background: list[asyncio.Task[None]] = []
        self._unsaved: set[_Live] = set()  # size changed since the last checkpoint
        self._takeovers: dict[str, asyncio.Future[_Live | None]] = {}  # by stream id
        self._creating: dict[str, asyncio.Event] = {}  # streams being created here, by id
        self._rebuilding: dict[str, Lease] = {}  # leases of streams being taken over
        self._recovering: dict[str, StreamInfo] = {}  # live streams whose bytes could not be read
        self._recover_budget: float | None = None  # while the store is not ready at start
        self.sweeper = Sweeper(self)
        self.quota = Quota(
            limit=settings.limits.total_bytes,
            repo=repo,
            metrics=self.metrics,
            flush=self._save_sizes,
            delete=lambda info: self.delete(info.id, key=info.key),
        )

    # -- start and stop ---------------------------------------------------------

    async def start(self) -> None:
        self.space.refresh()
        await self.store.start()
        await self.repo.start()
        await self.leases.start()
        await self.events.start(self.hub)
        await self.hub.serve_releases(self._let_go)
        # Renewals first: rebuilding many or large streams may outlast a lease.
        self._background = [asyncio.create_task(every(self._ttl / 3, self._renew_leases))]
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
            (self.sweeper.interval, self.sweeper.sweep),
        ]
        if self.quota.limit is not None:
            periodic.append((QUOTA_INTERVAL, self.quota.round))
        if self.settings.durability.fsync == "interval":
            periodic.append((self.settings.durability.interval, self._sync_dirty))
        self._background += [asyncio.create_task(every(s, work)) for s, work in periodic]
        self._background.append(asyncio.create_task(self._heed_other_nodes()))

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        for pending in self._takeovers.values():
            pending.cancel()
        await self.events.close()
        held = list(self._live.values())
        for live in held:
            await self._checkpoint(live)
            await self._close_writer(live, sync=self.settings.durability.fsync != "never")
        await self._give_up([live.lease for live in held])
        self._live.clear()
        await self.hub.close()
        await self.leases.close()
        await self.store.close()
        await self.repo.close()

    async def recover(self) -> None:
        """Rebuild the live streams whose lease this node can take: free, expired
        or its own from before a restart. Another node's are left alone. With
        the store not ready (the bucket down at start), a stream whose bytes
        cannot be read within RECOVER_BUDGET is left for _recover_later."""
        try:
            await self.store.check()
        except NotReady:  # reads from the bucket would wait out every retry
            self._recover_budget = RECOVER_BUDGET
        waiting = []
        try:
            for info in await self.repo.live():
                try:
                    await self.take_over(info.id, info.key, resumed=True, touch=True)
                except (StreamNotFound, StreamNotLive):
                    pass  # finished or deleted by another node meanwhile
                except StorageUnavailable as exc:
                    log.warning(
                        "stream_recovery_deferred stream_id=%s error=%s", info.id, exc.message
                    )
                    waiting.append(info)
        finally:
            self._recover_budget = None
        self._recovering = {info.id: info for info in waiting}
        live = {live.info.key for live in self._live.values()} | {i.key for i in waiting}
        await finish_interrupted(self.store, self.repo, live)
        if waiting:
            self._background.append(asyncio.create_task(self._recover_later()))

    async def _recover_later(self) -> None:
        """Try the deferred recoveries again, with backoff, until none is left.
        Meanwhile their producers get 503; a stream deleted, replaced or
        finished meanwhile is dropped."""
        delay, longest = RECOVER_RETRY
        while self._recovering:
            await asyncio.sleep(delay)
            delay = min(longest, delay * 2)
            for stream_id, info in list(self._recovering.items()):
                try:
                    await self.take_over(stream_id, info.key, resumed=True, touch=True)
                except (StreamNotFound, StreamNotLive):
                    pass
                except WeftError as exc:
                    log.info("stream_recovery_waits stream_id=%s error=%s", stream_id, exc.message)
                    continue
                if self._recovering.get(stream_id) is info:
                    del self._recovering[stream_id]

    # -- create -------------------------------------------------------------------

    async def create(
        self,
        stream_id: str | None,
        metadata: dict[str, Any],
        *,
        force: bool = False,
        expected_size: int | None = None,
        tus: bool = False,
        scopes: frozenset[str] = frozenset(),
    ) -> tuple[StreamInfo, bool]:
        """Create a live stream; return it and whether an old one was replaced.
        With expected_size the stream completes once it holds that many bytes;
        tus marks an upload made through /files/. Raises InvalidInput for a bad
        id, StreamExists when taken without force, InsufficientStorage (below
        limits.min_free_bytes, disk full) and StorageUnavailable; on any error
        nothing was created or replaced. A pre-create webhook (app/hooks.py) is
        asked first, with the caller's token scopes: it may refuse (403, 503)."""
        stream_id = validate_stream_id(stream_id) if stream_id is not None else new_stream_id()
        self.space.require()
        if self._pre_create is not None:
            await self._pre_create(stream_id, metadata, scopes)
        await self.quota.make_room(1, fresh=True)  # room for a byte; may evict
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
        # From the insert until it is held here, a resume must not take it over.
        creating = self._creating[stream_id] = asyncio.Event()
        try:
            return await self._insert_and_hold(info, force=force, now=now)
        finally:
            creating.set()
            if self._creating.get(stream_id) is creating:
                del self._creating[stream_id]

    async def _insert_and_hold(
        self, info: StreamInfo, *, force: bool, now: datetime
    ) -> tuple[StreamInfo, bool]:
        stream_id = info.id
        try:
            old = await self.repo.insert(info, replace=force)
        except BaseException:
            await self.store.delete(info.key)
            raise
        if old is not None:
            await self._discard(old)
        # After the insert: acquiring a new key's lease replaces the lease of the
        # id's older incarnation, which a refused create must leave alone. The new
        # key is on no lease yet, so it is granted unless the lease store fails.
        started = self._clock()
        try:
            lease = await self.leases.acquire(stream_id, info.key, self.node_id, self._ttl)
            if lease is None:
                raise StreamBusy(stream_id)
        except BaseException:
            await self.repo.delete(stream_id, info.key)
            await self.store.delete(info.key)
            raise
        self._hold(info, hashlib.sha256(), lease, started, now)
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
        await self._end_idle_producer(live)
        async with live.lock:  # not while a state change is being written
            if live.gone is not None:
                raise _gone(live)
            if live.producer is not None:
                raise StreamBusy(stream_id)
            if offset is not None and offset != live.size:
                raise OffsetMismatch(stream_id, live.size)
            session = live.producer = Producer(self, live)
        self.metrics.live_producers.inc()
        try:
            if live.info.expected_size == live.size:
                # It holds its declared size but an earlier completion failed: finish it now.
                await self._finish(live, StreamState.COMPLETE)
            yield session
        finally:
            live.producer = None
            self.metrics.live_producers.dec()
            try:
                if live.gone is None:
                    live.deadline = utcnow() + timedelta(seconds=self.settings.abandon_after)
                    await self._checkpoint(live)
                elif live.gone == "lost":
                    await self._close_lost_writer(live)
            finally:
                session.left.set()

    async def _end_idle_producer(self, live: _Live) -> None:
        """A producer idle for handoff_idle seconds (its connection half-open,
        most likely) is ended so that a resume can attach; wait until it left."""
        old = live.producer
        if old is None or old.idle_for() < self.settings.handoff_idle or not old.replace():
            return
        log.info("producer_replaced stream_id=%s offset=%d", live.info.id, live.size)
        with suppress(TimeoutError):
            await asyncio.wait_for(old.left.wait(), HANDOFF_WAIT)

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
        return live.deadline if live is not None and live.producer is None else None

    async def _require_live(self, stream_id: str) -> _Live:
        """The live stream, taken over from its node when its lease is free or
        expired. Raises StreamNotFound, StreamNotLive, and StreamBusy while
        another node holds it."""
        validate_stream_id(stream_id)
        live = self._live.get(stream_id)
        if live is not None:
            return live
        if stream_id in self._recovering:
            raise _not_recovered(stream_id)
        info = await self.repo.get(stream_id)
        if info is None:
            raise StreamNotFound(stream_id)
        if info.state is not StreamState.LIVE:
            raise StreamNotLive(stream_id, info.state.value)
        live = await self.take_over(info.id, info.key, resumed=True)
        if live is None and await self._ask_holder(info):
            live = await self.take_over(info.id, info.key, resumed=True)
        if live is None:
            raise StreamBusy(stream_id)
        return live

    async def _ask_holder(self, info: StreamInfo) -> bool:
        """Ask the node holding the lease to let the stream go (_let_go there)."""
        holder = await self.leases.holder(info.id)
        if holder is None:
            return True  # released or expired since: take_over may now succeed
        if holder.node_id == self.node_id or holder.key != info.key:
            return False
        return await self.hub.ask_release(info.id, info.key, holder.node_id)

    async def _let_go(self, stream_id: str, key: str) -> bool | None:
        """Another node's resume asks for the stream (hub.serve_releases): give
        the lease up unless a producer is sending; None when it is not ours."""
        live = self._live.get(stream_id)
        if live is None or live.info.key != key:
            return None
        await self._end_idle_producer(live)
        async with live.lock:
            if self._live.get(stream_id) is not live or live.gone is not None:
                return True  # finished or lost meanwhile: nothing of ours stands in the way
            if live.producer is not None:
                return False
            await self._checkpoint(live)
            live.gone = "lost"
            del self._live[stream_id]
            self._unsaved.discard(live)
            await self._close_lost_writer(live)
        # Expired, not released: should the asking node fail to take it over,
        # the stream is still among the expired leases that sweepers abandon.
        await self._give_up([live.lease])
        log.info("stream_handed_off stream_id=%s size=%d", stream_id, live.size)
        return True

    def _check_held(self, live: _Live) -> None:
        """Raise unless producers may still change the stream. Past held_until
        the lease may have expired (the renewals are late: the database is
        unreachable, or this process was paused) and another node may be
        writing: refuse rather than risk two writers."""
        if live.gone is not None:
            raise _gone(live)
        if self._clock() >= live.held_until:
            raise LeaseLost(live.info.id)

    async def _append(self, live: _Live, data: bytes) -> int:
        self._check_held(live)
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
            await self.quota.make_room(len(data))  # 507 when only live streams are left
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
        self.quota.consumed(stored)
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
            if live.gone in ("complete", "abandoned"):
                current = await self.repo.get(live.info.id)
                if current is None or current.key != live.info.key:
                    raise StreamNotFound(live.info.id)
                return current
            self._check_held(live)
            if state is StreamState.ABANDONED and live.producer is not None:
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
            if not await self.repo.update(info):
                return await self._settled_elsewhere(live)
            if live.gone is not None:  # deleted, replaced or lost while the row was written
                raise _gone(live)
            # Written: from here on the transition cannot fail.
            live.gone = "complete" if state is StreamState.COMPLETE else "abandoned"
            live.info = info
            await self._close_writer(live, sync=False)
            await self.store.finish(info.key)
            if self._live.get(info.id) is live:
                del self._live[info.id]
            await self._quietly(self.leases.forget(info.id, info.key), live, "lease_forget")
            kind = EventKind.COMPLETED if state is StreamState.COMPLETE else EventKind.ABANDONED
            self.hub.publish(HubEvent(kind, info.id, info.key, info.size, state, info))
            log.info("stream_%s stream_id=%s size=%d", kind.value, info.id, info.size)
            return info

    async def _settled_elsewhere(self, live: _Live) -> StreamInfo:
        """The row was no longer this live incarnation when _finish wrote it:
        another node finished, deleted or replaced it first. Its word stands."""
        current = await self.repo.get(live.info.id)
        if current is not None and current.key == live.info.key and current.state.finished:
            gone: Gone = "complete" if current.state is StreamState.COMPLETE else "abandoned"
        elif current is None or current.key != live.info.key:
            gone = "deleted"
        else:
            raise StorageUnavailable("The metadata database did not save the change.")
        live.gone = gone
        if self._live.get(live.info.id) is live:
            del self._live[live.info.id]
        await self._close_writer(live, sync=False)
        await self._quietly(self.leases.forget(live.info.id, live.info.key), live, "lease_forget")
        log.info("stream_settled_elsewhere stream_id=%s state=%s", live.info.id, gone)
        if current is None or gone == "deleted":
            raise StreamNotFound(live.info.id)
        return current

    async def abandon(self, live: _Live) -> None:
        """Abandon an idle stream whose deadline passed (the sweeper's). A failed
        write leaves it live, to be tried again a little later."""
        if live.producer is not None or live.gone is not None:
            return
        # A stream that holds its declared size only missed its completion (a failed write).
        full = live.info.expected_size == live.size
        try:
            await self._finish(live, StreamState.COMPLETE if full else StreamState.ABANDONED)
        except WeftError as exc:
            log.warning("abandon_failed stream_id=%s error=%s", live.info.id, exc.message)
            if live.gone is None and live.producer is None:
                retry = min(ABANDON_RETRY, self.settings.abandon_after)
                live.deadline = utcnow() + timedelta(seconds=retry)

    def idle_past_deadline(self, now: datetime) -> list[_Live]:
        """This node's live streams without a producer whose deadline has passed."""
        return [
            live
            for live in self._live.values()
            if live.producer is None and live.gone is None and live.deadline <= now
        ]

    async def delete(self, stream_id: str, *, key: str | None = None) -> StreamInfo:
        """Remove a stream's row and bytes and end its readers (only incarnation
        key, if given). Raises StreamNotFound; InsufficientStorage or
        StorageUnavailable when the row could not be removed (the stream is
        then untouched)."""
        removed = await self._delete_row(stream_id, key)
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
        live = await self._drop_held(info)
        await self._quietly(self.leases.forget(info.id, info.key), live, "lease_forget")
        self.hub.publish(HubEvent(EventKind.DELETED, info.id, info.key, info.size, None, info))
        await self.store.delete(info.key)
        self.space.refresh()
        log.info("stream_deleted stream_id=%s", info.id)

    async def _heed_other_nodes(self) -> None:
        """Apply the deletes and replacements made through other nodes to the
        streams this node writes: their producers stop, their local copies go.
        (Events of this node's own come back too; they find nothing to do.)"""
        while True:
            try:
                async with self.hub.feed() as feed:
                    async for event in feed:
                        live = self._live.get(event.stream_id)
                        if live is None or event.info is None:
                            continue
                        if (event.kind is EventKind.DELETED and event.key == live.info.key) or (
                            event.kind is EventKind.CREATED and event.key != live.info.key
                        ):
                            await self._drop_elsewhere_deleted(live)
            except Exception:
                log.exception("heed_other_nodes_failed")
            await asyncio.sleep(1.0)  # a feed that fell behind ends: open a new one

    async def _drop_held(self, info: StreamInfo) -> _Live | None:
        """Stop holding that incarnation here (deleted or replaced): its producer
        stops and its writer closes. The stream as it was held, if it was."""
        recovering = self._recovering.get(info.id)
        if recovering is not None and recovering.key == info.key:
            del self._recovering[info.id]
        live = self._live.get(info.id)
        if live is None or live.info.key != info.key:
            return None
        live.gone = "deleted"
        del self._live[info.id]
        await self._close_writer(live, sync=False)
        return live

    async def _drop_elsewhere_deleted(self, live: _Live) -> None:
        if await self._drop_held(live.info) is None:
            return
        await self.store.delete(live.info.key)  # this node's copy; the shared one is gone
        log.info("stream_deleted_elsewhere stream_id=%s", live.info.id)

    # -- read ---------------------------------------------------------------------

    async def info(self, stream_id: str, *, take_over: bool = False) -> StreamInfo:
        """The stream now, with the in-memory size of a live one. Raises
        StreamNotFound. take_over (a resuming producer asking for its offset):
        a live stream no node holds is taken over first, so the size is the
        stored one, not the row's last checkpoint."""
        validate_stream_id(stream_id)
        live = self._live.get(stream_id)
        if live is not None:
            return live.info.with_changes(size=live.size)
        if take_over and stream_id in self._recovering:
            raise _not_recovered(stream_id)  # its size is not known yet
        info = await self.repo.get(stream_id)
        if info is None:
            raise StreamNotFound(stream_id)
        if take_over and info.state is StreamState.LIVE:
            try:
                live = await self.take_over(info.id, info.key, resumed=True)
            except (StreamNotFound, StreamNotLive):
                return await self.info(stream_id)  # it finished or went meanwhile
            if live is not None:
                return live.info.with_changes(size=live.size)
        if info.state is StreamState.LIVE:
            return info.with_changes(size=await self._stored_size(info, exact=take_over))
        return info

    async def _stored_size(self, info: StreamInfo, *, exact: bool = False) -> int:
        """The size of a live stream another node writes: the store knows more
        than the row's last checkpoint (with JetStream, exactly what was
        acknowledged). When the store cannot say, the checkpoint, unless exact
        (a resuming producer's offset: a stale one would be below what it was
        told is stored, so it gets 503 and asks again)."""
        try:
            return max(info.size, await self.store.size(info.key))
        except WeftError as exc:
            if exact and isinstance(exc, NotReady):
                raise
            return info.size

    @property
    def offers_encoding(self) -> bool:
        """Whether finished streams are sent in a content coding to readers
        that ask (only where they are stored compressed: zstd frames then pass
        through as they are, and the CPU a coding costs is not spent on data
        the operator chose not to compress)."""
        return self.settings.compression == "zstd"

    async def stored_bytes(self, info: StreamInfo) -> int:
        """The bytes info's stream takes at rest (its size, unless the store
        compresses); never fails a request: the size when the store cannot say."""
        if not isinstance(self.store, SupportsStoredBytes):
            return info.size
        try:
            return await self.store.stored_bytes(info.key)
        except WeftError:
            return info.size

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
        if info.state is StreamState.LIVE:
            return await self._stored_size(info), info.state
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
            poll=None if stream_id in self._live else REMOTE_POLL,
        )

    def live_ids(self) -> list[str]:
        return list(self._live)

    # -- leases and takeover -------------------------------------------------------

    @property
    def _ttl(self) -> float:
        return self.settings.lease_ttl

    def _clock(self) -> float:
        return asyncio.get_running_loop().time()

    def _hold(
        self, info: StreamInfo, hasher: Any, lease: Lease, started: float, idle_since: datetime
    ) -> _Live:
        """Make a stream this node's, under lease (acquired at loop time started)."""
        deadline = idle_since + timedelta(seconds=self.settings.abandon_after)
        live = _Live(
            info=info,
            size=info.size,
            hasher=hasher,
            lease=lease,
            held_until=started + self._ttl,
            deadline=deadline,
        )
        self._live[info.id] = live
        return live

    async def take_over(
        self, stream_id: str, key: str, *, resumed: bool, touch: bool = False
    ) -> _Live | None:
        """Make a live stream this node's when its lease is free, expired or
        already this node's (a restart): None while another node holds it.
        resumed (a producer coming back, a restart): its abandonment counts from
        now; otherwise (the sweeper) from the row's last activity. touch: the
        row's updated_at becomes now. Raises StreamNotFound or StreamNotLive
        when the row is no longer that live incarnation. One takeover per
        stream at a time: a concurrent caller waits for the same one."""
        pending = self._takeovers.get(stream_id)
        if pending is None:
            pending = asyncio.ensure_future(
                self._adopt(stream_id, key, resumed=resumed, touch=touch)
            )
            self._takeovers[stream_id] = pending

            def done(task: asyncio.Future[_Live | None]) -> None:
                if self._takeovers.get(stream_id) is task:
                    del self._takeovers[stream_id]
                if not task.cancelled():
                    task.exception()  # retrieved: each caller raises it for itself

            pending.add_done_callback(done)
        # Shielded: a client that leaves does not waste a rehash half done.
        live = await asyncio.shield(pending)
        if live is not None and live.info.key != key:
            return None
        return live

    async def _adopt(self, stream_id: str, key: str, *, resumed: bool, touch: bool) -> _Live | None:
        creating = self._creating.get(stream_id)
        if creating is not None:
            # This node is creating it: its row is there before it is held here.
            await creating.wait()
        held = self._live.get(stream_id)
        if held is not None and held.info.key == key:
            return held
        lease = await self.leases.acquire(stream_id, key, self.node_id, self._ttl)
        if lease is None:
            return None
        self._rebuilding[stream_id] = lease  # renewed with the others meanwhile
        try:
            # Read after acquiring: the holder may have finished it just before.
            row = await self.repo.get(stream_id)
            if row is None or row.key != key:
                raise StreamNotFound(stream_id)
            if row.state is not StreamState.LIVE:
                raise StreamNotLive(stream_id, row.state.value)
            item = await recover_stream(
                self.store, self.repo, row, self.metrics, touch=touch, budget=self._recover_budget
            )
        except (StreamNotFound, StreamNotLive):
            await self._quietly(self.leases.forget(stream_id, key), None, "lease_forget")
            raise
        except BaseException:
            await self._give_up([lease])
            raise
        finally:
            del self._rebuilding[stream_id]
        # Still ours after the rebuild, however long it took?
        started = self._clock()
        if stream_id not in await self.leases.renew(self.node_id, [lease], self._ttl):
            log.warning("takeover_lost stream_id=%s epoch=%d", stream_id, lease.epoch)
            return None
        held = self._live.get(stream_id)
        if held is not None and held.info.key == key:
            return held  # made this node's meanwhile (created here): that one stands
        idle_since = utcnow() if resumed else row.updated_at
        live = self._hold(item.info, item.hasher, lease, started, idle_since)
        if not touch:  # not the recovery at start
            self.metrics.takeovers.inc()
        log.info(
            "stream_taken_over stream_id=%s size=%d epoch=%d", stream_id, live.size, lease.epoch
        )
        return live

    async def _renew_leases(self) -> None:
        """Every lease of this node in one call; a lease found lost drops its stream."""
        held = list(self._live.values())
        leases = [live.lease for live in held] + list(self._rebuilding.values())
        if not leases:
            return
        started = self._clock()
        kept = await self.leases.renew(self.node_id, leases, self._ttl)
        for live in held:
            if live.info.id in kept:
                live.held_until = started + self._ttl
            else:
                await self.lose(live)

    async def confirm_lease(self, live: _Live) -> bool:
        """Renew one lease now (before acting on the stream alone: abandoning it);
        a lease found lost drops the stream."""
        started = self._clock()
        if live.info.id in await self.leases.renew(self.node_id, [live.lease], self._ttl):
            live.held_until = started + self._ttl
            return True
        await self.lose(live)
        return False

    async def lose(self, live: _Live) -> None:
        """Drop a stream whose lease this node lost, without touching its row:
        another node holds it now (or may take it over). Its producer's next
        append gets 503 LeaseLost and resumes wherever the stream is held."""
        async with live.lock:
            if live.gone is not None or self._live.get(live.info.id) is not live:
                return
            live.gone = "lost"
            del self._live[live.info.id]
            self._unsaved.discard(live)
            if live.producer is None:  # else its producer closes the writer when it leaves
                await self._close_lost_writer(live)
        self.metrics.leases_lost.inc()
        log.warning("lease_lost stream_id=%s epoch=%d", live.info.id, live.lease.epoch)

    async def _close_lost_writer(self, live: _Live) -> None:
        """The writer of a stream another node writes now (lost or handed off);
        the store drops a local copy that is only a mirror."""
        try:
            await self._close_writer(live, sync=self.settings.durability.fsync != "never")
            await self.store.hand_off(live.info.key)
        except OSError as exc:
            log.warning("writer_close_failed stream_id=%s error=%s", live.info.id, exc.strerror)

    async def _give_up(self, leases: list[Lease]) -> None:
        """Let leases expire now (one renewal with no time left) rather than
        release them: another node may take the streams over at once, and a
        stream whose producer never comes back is still among the expired
        leases that sweepers abandon (a released lease is not)."""
        if leases:
            await self._quietly(self.leases.renew(self.node_id, leases, 0.0), None, "lease_expire")

    async def _quietly(self, work: Awaitable[object], live: _Live | None, what: str) -> None:
        """A lease call that must not fail the state change around it: a lease
        left behind expires, and the sweeper forgets leases of finished rows."""
        try:
            await work
        except WeftError as exc:
            stream = live.info.id if live is not None else "-"
            log.warning("%s_failed stream_id=%s error=%s", what, stream, exc.message)

    # -- background work ----------------------------------------------------------

    async def _checkpoint(self, live: _Live) -> None:
        """Best effort: the segment files, not the checkpoint, say what is stored."""
        self._unsaved.discard(live)
        if live.gone is not None:
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
        entries = [(live.info.id, live.info.key, live.size) for live in batch if live.gone is None]
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

    async def _sync_dirty(self) -> None:
        """durability.fsync interval: what was written since the last round reaches the disk."""
        for live in list(self._live.values()):
            if live.dirty and live.writer is not None:
                live.dirty = False
                await live.writer.sync()


def _gone(live: _Live) -> WeftError:
    """Why a producer may no longer append: finished, deleted or replaced, or
    the lease lost (503: the client resumes, through whichever node holds it)."""
    if live.gone == "lost":
        return LeaseLost(live.info.id)
    if live.gone == "deleted":
        return StreamNotFound(live.info.id)
    return StreamNotLive(live.info.id, str(live.gone))


def _not_recovered(stream_id: str) -> StorageUnavailable:
    return StorageUnavailable(
        f"Stream {stream_id} is not recovered yet: its stored bytes cannot be read "
        "(the object store is not available); try again later."
    )
