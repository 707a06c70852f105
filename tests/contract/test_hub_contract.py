"""Hub's contract (app/storage/base.py) on every implementation present."""

from __future__ import annotations

import asyncio

from app.storage.base import Hub
from app.streams.models import EventKind, HubEvent, StreamState


def event(kind: EventKind, stream_id: str, size: int = 0) -> HubEvent:
    state = None if kind is EventKind.DELETED else StreamState.LIVE
    return HubEvent(kind, stream_id, "k", size, state)


async def test_subscriber_gets_the_newest_progress_beyond_its_position(hub: Hub) -> None:
    async with hub.subscribe("s") as sub:
        assert await sub.wait(beyond=0, timeout=0.01) is None
        for size in (1, 2, 3):
            hub.publish(event(EventKind.PROGRESS, "s", size))
        got = await sub.wait(beyond=0, timeout=2)
        assert got is not None and got.size == 3
        assert await sub.wait(beyond=3, timeout=0.01) is None
        hub.publish(event(EventKind.PROGRESS, "other", 9))
        assert await sub.wait(beyond=3, timeout=0.01) is None


async def test_a_waiter_is_woken_by_a_publish(hub: Hub) -> None:
    async with hub.subscribe("s") as sub:
        waiter = asyncio.create_task(sub.wait(beyond=0, timeout=5))
        await asyncio.sleep(0)
        hub.publish(event(EventKind.DELETED, "s"))
        got = await waiter
        assert got is not None and got.kind is EventKind.DELETED


async def test_feed_carries_lifecycle_events_in_order(hub: Hub) -> None:
    async with hub.feed() as feed:
        hub.publish(event(EventKind.CREATED, "a"))
        hub.publish(event(EventKind.PROGRESS, "a", 5))
        hub.publish(event(EventKind.DELETED, "a"))
        hub.publish(event(EventKind.CREATED, "b"))
        seen = []
        async for item in feed:
            seen.append((item.kind, item.stream_id))
            if len(seen) == 3:
                break
    assert seen == [(EventKind.CREATED, "a"), (EventKind.DELETED, "a"), (EventKind.CREATED, "b")]
