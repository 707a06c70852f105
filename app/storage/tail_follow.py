"""A node follows each live tail its readers are at once, for all of them
(DESIGN "Scale-out": "each node follows a stream's subject once for all its
local readers").

A follow is an ordered push consumer of JetStream on one stream's subject,
started by the first read that had to ask JetStream for that stream (a reader
at the live end, or near it). JetStream delivers each new message once, as
soon as it is stored, into the node's RecentMessages, where every local
reader finds it: a line written on another node then reaches a reader here
without a request of its own, and a hundred readers cost one delivery.

A read that finds the next bytes neither in the cache nor delivered yet waits
for them briefly (the progress event that woke the reader and the delivery
travel separately), then asks JetStream as before; a follow that lets it wait
in vain and has delivered nothing for STALE seconds is replaced. Follows
nobody read for a while, and those past the cap, are dropped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

log = logging.getLogger("weft.tail")

ARRIVAL_WAIT = 0.05  # seconds a read waits for a delivery it expects
# A follow that let a read wait in vain is replaced only when it has delivered
# nothing for this long: one that is merely late (a busy machine) is kept, as
# making consumers anew would only add to the load.
STALE = 5.0
IDLE = 30.0  # a follow nobody read for this long is dropped
MAX_FOLLOWS = 2048
INACTIVE = 30.0  # JetStream removes the consumer of a node that went away after this
# Deliveries a follow may hold before the event loop takes them (nats-py's own
# default is 256 MiB per subscription): beyond, nats-py drops them and the
# ordered consumer starts again after the gap. Memory stays bounded by follows.
PENDING_BYTES = 8 * 1024 * 1024


class Follow:
    """One stream's consumer: how far its deliveries reached, and a wake-up."""

    __slots__ = ("key", "end", "used", "heard", "arrived", "subscription", "stopped")

    def __init__(self, key: str, end: int) -> None:
        self.key = key
        self.end = end  # the offset just past the last message delivered (or read)
        self.used = self.heard = time.monotonic()  # last read; last delivery (or start)
        self.arrived = asyncio.Event()
        self.subscription: Any = None
        self.stopped = False

    @property
    def active(self) -> bool:
        """Subscribed and not dropped: its deliveries can be waited for."""
        return self.subscription is not None and not self.stopped

    @property
    def stale(self) -> bool:
        return time.monotonic() - self.heard > STALE

    def delivered(self, end: int) -> None:
        self.heard = time.monotonic()
        self.end = max(self.end, end)
        woken, self.arrived = self.arrived, asyncio.Event()
        woken.set()

    async def wait_beyond(self, offset: int, timeout: float) -> bool:
        """Whether a delivery reached past offset within timeout."""
        async with asyncio.timeout(timeout):
            while self.end <= offset and not self.stopped:
                await self.arrived.wait()
        return self.end > offset


class Followers:
    """This node's follows, by storage key. ``on_message(key, msg)`` turns a
    delivery into a cached message and returns its end offset (None if unusable)."""

    def __init__(
        self,
        on_message: Callable[[str, Msg], int | None],
        subject: Callable[[str], str],
        stream: Callable[[str], str],
    ) -> None:
        self._on_message = on_message
        self._subject = subject
        self._stream = stream
        self._follows: collections.OrderedDict[str, Follow] = collections.OrderedDict()
        self._starting: set[asyncio.Task[None]] = set()

    def get(self, key: str) -> Follow | None:
        follow = self._follows.get(key)
        if follow is not None:
            follow.used = time.monotonic()
            self._follows.move_to_end(key)
        return follow

    def start(self, js: JetStreamContext, key: str, after_seq: int, end: int) -> None:
        """Follow key from the message after sequence after_seq (it ends at
        end), subscribing in the background."""
        if key in self._follows:
            return
        follow = self._follows[key] = Follow(key, end)
        self._trim()
        task = asyncio.create_task(self._subscribe(js, follow, after_seq))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _subscribe(self, js: JetStreamContext, follow: Follow, after_seq: int) -> None:
        key = follow.key

        async def deliver(msg: Msg) -> None:
            end = self._on_message(key, msg)
            if end is not None:
                follow.delivered(end)

        try:
            subscription = await asyncio.wait_for(
                js.subscribe(
                    self._subject(key),
                    stream=self._stream(key),
                    cb=deliver,
                    ordered_consumer=True,
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    config=ConsumerConfig(opt_start_seq=after_seq + 1),
                    inactive_threshold=INACTIVE,
                    pending_bytes_limit=PENDING_BYTES,
                ),
                5.0,
            )
        except Exception as exc:
            log.debug("tail_follow_failed key=%s error=%s", key, type(exc).__name__)
            self.drop(key, follow)
            return
        if follow.stopped:  # dropped while it was being made
            await _unsubscribe(subscription)
        else:
            follow.subscription = subscription

    def drop(self, key: str, follow: Follow | None = None) -> None:
        """Stop following key (only that follow, when given)."""
        current = self._follows.get(key)
        if current is None or (follow is not None and current is not follow):
            return
        del self._follows[key]
        self._stop(current)

    def _stop(self, follow: Follow) -> None:
        follow.stopped = True
        follow.arrived.set()
        if follow.subscription is not None:
            task = asyncio.create_task(_unsubscribe(follow.subscription))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    def _trim(self) -> None:
        idle_since = time.monotonic() - IDLE
        while self._follows:
            key, oldest = next(iter(self._follows.items()))
            if oldest.used >= idle_since and len(self._follows) <= MAX_FOLLOWS:
                return
            del self._follows[key]
            self._stop(oldest)

    async def close(self) -> None:
        follows, self._follows = list(self._follows.values()), collections.OrderedDict()
        for follow in follows:
            self._stop(follow)
        if self._starting:
            await asyncio.wait(list(self._starting), timeout=2.0)


async def _unsubscribe(subscription: Any) -> None:
    with suppress(Exception):
        await asyncio.wait_for(subscription.unsubscribe(), 2.0)
