"""In-process fan-out of small events (DESIGN "Hub")."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.storage.base import ReleaseHandler
from app.streams.models import EventKind, HubEvent

FEED_BACKLOG = 10_000


class _Channel:
    """The newest event of one stream and a wake-up for everyone waiting on it."""

    __slots__ = ("latest", "changed", "subscribers")

    def __init__(self) -> None:
        self.latest: HubEvent | None = None
        self.changed = asyncio.Event()
        self.subscribers = 0

    def put(self, event: HubEvent) -> None:
        self.latest = event
        # Swap the event before setting it: waiters woken now see the new latest,
        # waiters arriving later wait on a fresh, unset event.
        woken, self.changed = self.changed, asyncio.Event()
        woken.set()


class MemorySubscription:
    def __init__(self, channel: _Channel) -> None:
        self._channel = channel
        self._seen: HubEvent | None = None

    @property
    def latest(self) -> HubEvent | None:
        return self._channel.latest

    async def wait(self, *, beyond: int, timeout: float | None) -> HubEvent | None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            event = self._channel.latest
            if event is not None and event is not self._seen:
                self._seen = event
                if event.size > beyond or event.kind is not EventKind.PROGRESS:
                    return event
            changed = self._channel.changed
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return None


class MemoryFeed:
    def __init__(self) -> None:
        self._queue: collections.deque[HubEvent] = collections.deque()
        self._ready = asyncio.Event()
        self.overflowed = False
        self.closed = False

    def put(self, event: HubEvent) -> None:
        if len(self._queue) >= FEED_BACKLOG:
            self.overflowed = True
        else:
            self._queue.append(event)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    def __aiter__(self) -> AsyncIterator[HubEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[HubEvent]:
        while True:
            while self._queue:
                yield self._queue.popleft()
            if self.overflowed or self.closed:
                return
            self._ready.clear()
            await self._ready.wait()


class MemoryHub:
    """One process's hub. Channels exist only while someone subscribes."""

    def __init__(self) -> None:
        self._channels: dict[str, _Channel] = {}
        self._feeds: set[MemoryFeed] = set()
        self._release: ReleaseHandler | None = None

    def publish(self, event: HubEvent) -> None:
        channel = self._channels.get(event.stream_id)
        if channel is not None:
            channel.put(event)
        if event.kind is not EventKind.PROGRESS:
            for feed in self._feeds:
                feed.put(event)

    @asynccontextmanager
    async def subscribe(self, stream_id: str) -> AsyncIterator[MemorySubscription]:
        channel = self._channels.get(stream_id)
        if channel is None:
            channel = self._channels[stream_id] = _Channel()
        channel.subscribers += 1
        try:
            yield MemorySubscription(channel)
        finally:
            channel.subscribers -= 1
            if channel.subscribers == 0:
                del self._channels[stream_id]

    @asynccontextmanager
    async def feed(self) -> AsyncIterator[MemoryFeed]:
        feed = MemoryFeed()
        self._feeds.add(feed)
        try:
            yield feed
        finally:
            self._feeds.discard(feed)

    async def start(self) -> None:
        pass

    async def check(self) -> None:
        pass

    async def serve_releases(self, handler: ReleaseHandler) -> None:
        self._release = handler

    async def ask_release(self, stream_id: str, key: str, node_id: str) -> bool:
        # One process: the holder is the service that serves releases here.
        return self._release is not None and bool(await self._release(stream_id, key))

    async def close(self) -> None:
        for feed in self._feeds:
            feed.close()
