"""Readers: replay from the store, then tail on hub events (DESIGN "Read").

Bytes are pulled from the store by each reader up to a size the writer
published after writing, so the switch from replay to tail neither misses nor
repeats a byte, and a slow reader only falls behind on disk.

A body that cannot be delivered whole (a block failed its checksum, bytes
vanished underneath) raises BodyCut: the response is then cut, not ended, so
no client mistakes it for the whole stream.

A tailing reader whose store is unreachable for a while (the tail in NATS
JetStream restarting) waits for it, as the stream's producer does, instead of
being cut: it tries again every STORE_RETRY seconds (within tail_timeout).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

from app.errors import BodyCut, CorruptBlock, StorageUnavailable
from app.metrics import Metrics
from app.storage.base import Hub, SegmentStore
from app.streams.integrity import report
from app.streams.models import EventKind, StreamInfo, StreamState

BLOCK = 1 << 20
STORE_RETRY = 0.5  # seconds before a tailing reader reads again from an unreachable store

# (stream id, storage key) -> (size, state) now, or None once that incarnation is gone.
Position = Callable[[str, str], Awaitable[tuple[int, StreamState] | None]]


@dataclass
class StreamReader:
    """One reader's response body. ``end`` is None for a tailing reader."""

    info: StreamInfo
    start: int
    end: int | None
    store: SegmentStore
    hub: Hub
    position: Position
    tail_timeout: float | None
    metrics: Metrics
    block: int = BLOCK
    # Seconds between looks at the position while no event comes: for a stream
    # another node writes, whose progress events (at most once, over NATS) may
    # be lost or may have been sent before this reader subscribed.
    poll: float | None = None

    def __aiter__(self) -> AsyncIterator[bytes | memoryview]:
        return self._counted()

    async def _counted(self) -> AsyncIterator[bytes | memoryview]:
        self.metrics.live_readers.inc()
        sent = 0
        try:
            body = self._replay(self.start, self.end) if self.end is not None else self._tail()
            # aclosing: leave the hub subscription now, not whenever the GC runs.
            async with aclosing(body) as chunks:
                async for data in chunks:
                    self.metrics.bytes_out.inc(len(data))
                    sent += len(data)
                    yield data
            if self.end is not None and sent < self.end - self.start:
                raise BodyCut()  # fewer bytes stored than the stream's size
        except CorruptBlock as exc:
            report(self.metrics, self.info.id, exc, "read")
            raise
        finally:
            self.metrics.live_readers.dec()

    async def _replay(self, offset: int, end: int) -> AsyncGenerator[bytes | memoryview, None]:
        while offset < end:
            data = await self.store.read(self.info.key, offset, min(self.block, end - offset))
            if not data:
                return  # deleted or shortened underneath us
            offset += len(data)
            yield data

    async def _tail(self) -> AsyncGenerator[bytes | memoryview, None]:
        stream_id, key = self.info.id, self.info.key
        offset = self.start
        async with self.hub.subscribe(stream_id) as subscription:
            # Asked only now that the subscription exists, so no event falls between.
            now = await self.position(stream_id, key)
            if now is None:
                return
            known, state = now
            idle = 0.0  # seconds without a byte, for tail_timeout
            while True:
                try:
                    async for data in self._replay(offset, known):
                        offset += len(data)
                        idle = 0.0
                        yield data
                except StorageUnavailable:
                    if self.tail_timeout is not None and idle >= self.tail_timeout:
                        raise
                    await asyncio.sleep(STORE_RETRY)
                    idle += STORE_RETRY
                    continue
                if offset < known or state.finished:
                    return
                wait = self.tail_timeout
                if self.poll is not None:
                    wait = self.poll if wait is None else min(self.poll, wait - idle)
                event = await subscription.wait(beyond=offset, timeout=wait)
                if event is None:
                    idle += wait or 0.0
                    if self.poll is None or (
                        self.tail_timeout is not None and idle >= self.tail_timeout
                    ):
                        return
                    try:
                        now = await self.position(stream_id, key)
                    except StorageUnavailable:
                        continue  # asked again at the next poll: a slow store is no end
                    if now is None:
                        return
                    known, state = now if now[1].finished else (max(known, now[0]), now[1])
                    continue
                if event.key != key or event.kind is EventKind.DELETED:
                    return
                if event.kind in (EventKind.COMPLETED, EventKind.ABANDONED):
                    known, state = event.size, StreamState(event.state or StreamState.COMPLETE)
                else:
                    known = max(known, event.size)
