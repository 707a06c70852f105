"""A bounded log of recent lifecycle events, for ``GET /events`` and its
``Last-Event-ID`` resume (SPEC §5)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from app.storage.base import Hub
from app.streams.models import HubEvent, StreamInfo

WINDOW = 1000


@dataclass(frozen=True)
class LoggedEvent:
    seq: int
    kind: str
    info: StreamInfo


class EventLog:
    """Records the hub's lifecycle feed. Sequence numbers are the hub's own when
    it has them (NATS: the JetStream sequence, the same on every node), else
    they start from the clock (microseconds), so they keep increasing across
    restarts and an old Last-Event-ID never skips new events."""

    def __init__(self, window: int = WINDOW) -> None:
        self._events: collections.deque[LoggedEvent] = collections.deque(maxlen=window)
        self._seq = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, hub: Hub) -> None:
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._record(hub, ready))
        await ready.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _record(self, hub: Hub, ready: asyncio.Event) -> None:
        async with hub.feed() as feed:
            ready.set()
            async for event in feed:
                self.add(event)

    def add(self, event: HubEvent) -> None:
        if event.info is None:
            return
        if event.seq is not None:
            self._seq = event.seq
        else:
            self._seq = max(self._seq + 1, time.time_ns() // 1000)
        self._events.append(LoggedEvent(self._seq, event.kind.value, event.info))
        woken, self._changed = self._changed, asyncio.Event()
        woken.set()

    async def follow(
        self, after: int | None, *, heartbeat: float
    ) -> AsyncIterator[LoggedEvent | None]:
        """Events after seq ``after`` still in the window (None: only new ones), then
        new events as they come; None after every ``heartbeat`` seconds of quiet."""
        cursor = self._seq if after is None else after
        while True:
            changed = self._changed
            for event in list(self._events):
                if event.seq > cursor:
                    cursor = event.seq
                    yield event
            try:
                await asyncio.wait_for(changed.wait(), heartbeat)
            except TimeoutError:
                yield None
