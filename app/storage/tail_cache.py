"""The messages of live tails that this node read lately, shared by all of its
readers (DESIGN "Scale-out": a node follows a stream once, however many of its
readers tail it). A hundred readers of one stream written elsewhere then cost
one JetStream fetch per message between them, not a hundred: reads of the
same messages at the same time wait for one fetch, and later ones find the
bytes here. Bounded by bytes; the least recently used messages go first.

A message's bytes never change for a storage key (a stream is append-only and
a replaced stream gets a new key), so what is cached stays true until the key
is deleted."""

from __future__ import annotations

import asyncio
import bisect
import collections
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar


class Message(Protocol):
    @property
    def offset(self) -> int: ...

    @property
    def end(self) -> int: ...


M = TypeVar("M", bound=Message)
T = TypeVar("T")


class RecentMessages(Generic[M]):
    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._bytes = 0
        self._offsets: dict[str, list[int]] = {}  # key -> sorted offsets of cached messages
        self._messages: collections.OrderedDict[tuple[str, int], M] = collections.OrderedDict()
        self._fetches: dict[tuple[str, int], asyncio.Future[Any]] = {}

    def covering(self, key: str, offset: int) -> M | None:
        """The cached message that holds the byte at offset, if any."""
        offsets = self._offsets.get(key)
        if not offsets:
            return None
        at = bisect.bisect_right(offsets, offset) - 1
        if at < 0:
            return None
        message = self._messages.get((key, offsets[at]))
        if message is None or message.end <= offset:
            return None
        self._messages.move_to_end((key, offsets[at]))
        return message

    def add(self, key: str, message: M) -> None:
        slot = (key, message.offset)
        if slot in self._messages or message.end == message.offset:
            return
        self._messages[slot] = message
        bisect.insort(self._offsets.setdefault(key, []), message.offset)
        self._bytes += message.end - message.offset
        while self._bytes > self._budget and self._messages:
            (old_key, old_offset), old = self._messages.popitem(last=False)
            self._bytes -= old.end - old.offset
            offsets = self._offsets[old_key]
            offsets.remove(old_offset)
            if not offsets:
                del self._offsets[old_key]

    def forget(self, key: str) -> None:
        for offset in self._offsets.pop(key, []):
            old = self._messages.pop((key, offset))
            self._bytes -= old.end - old.offset

    async def once(self, key: str, after: int, fetch: Callable[[], Awaitable[T]]) -> T:
        """fetch(), shared with every caller asking for the same (key, after) meanwhile."""
        slot = (key, after)
        pending = self._fetches.get(slot)
        if pending is None:
            pending = asyncio.ensure_future(fetch())
            self._fetches[slot] = pending
            pending.add_done_callback(lambda done: self._settled(slot, done))
        result: T = await asyncio.shield(pending)
        return result

    def _settled(self, slot: tuple[str, int], done: asyncio.Future[Any]) -> None:
        self._fetches.pop(slot, None)
        if not done.cancelled():
            done.exception()  # retrieved: every waiter raises it for itself
