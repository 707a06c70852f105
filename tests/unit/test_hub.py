from __future__ import annotations

import asyncio

from app.storage.memory_hub import FEED_BACKLOG, MemoryHub
from app.streams.models import EventKind, HubEvent, StreamState

SHORT = 0.05  # a wait that is expected to time out


def progress(stream_id: str, size: int, key: str = "k") -> HubEvent:
    return HubEvent(EventKind.PROGRESS, stream_id, key, size, StreamState.LIVE)


def lifecycle(kind: EventKind, stream_id: str, size: int = 0, key: str = "k") -> HubEvent:
    state = {
        EventKind.CREATED: StreamState.LIVE,
        EventKind.COMPLETED: StreamState.COMPLETE,
        EventKind.ABANDONED: StreamState.ABANDONED,
    }.get(kind)
    return HubEvent(kind, stream_id, key, size, state)


async def test_wait_returns_progress_published_while_waiting() -> None:
    hub = MemoryHub()
    async with hub.subscribe("s") as sub:
        waiter = asyncio.create_task(sub.wait(beyond=0, timeout=2))
        await asyncio.sleep(0)  # let the waiter block
        hub.publish(progress("s", 5))
        event = await waiter
    assert event is not None and event.size == 5


async def test_wait_sees_only_the_latest_of_several_events() -> None:
    hub = MemoryHub()
    async with hub.subscribe("s") as sub:
        for size in (1, 2, 3):
            hub.publish(progress("s", size))
        event = await sub.wait(beyond=0, timeout=1)
        assert event is not None and event.size == 3
        assert sub.latest is event
        # Nothing new since: the same event is not returned twice.
        assert await sub.wait(beyond=0, timeout=SHORT) is None


async def test_wait_ignores_progress_not_beyond_offset() -> None:
    hub = MemoryHub()
    async with hub.subscribe("s") as sub:
        hub.publish(progress("s", 4))
        assert await sub.wait(beyond=4, timeout=SHORT) is None
        hub.publish(progress("s", 6))
        event = await sub.wait(beyond=4, timeout=1)
    assert event is not None and event.size == 6


async def test_wait_returns_lifecycle_event_even_without_new_bytes() -> None:
    hub = MemoryHub()
    async with hub.subscribe("s") as sub:
        hub.publish(lifecycle(EventKind.COMPLETED, "s", size=4))
        event = await sub.wait(beyond=4, timeout=1)
    assert event is not None and event.kind is EventKind.COMPLETED
    assert event.size == 4


async def test_wait_times_out_with_none() -> None:
    hub = MemoryHub()
    loop = asyncio.get_running_loop()
    async with hub.subscribe("s") as sub:
        started = loop.time()
        assert await sub.wait(beyond=0, timeout=SHORT) is None
    assert loop.time() - started >= SHORT * 0.9


async def test_events_of_other_streams_do_not_wake_a_subscriber() -> None:
    hub = MemoryHub()
    async with hub.subscribe("a") as sub_a, hub.subscribe("b") as sub_b:
        hub.publish(progress("b", 9))
        assert await sub_a.wait(beyond=0, timeout=SHORT) is None
        assert sub_a.latest is None
        event = await sub_b.wait(beyond=0, timeout=1)
    assert event is not None and event.stream_id == "b"


async def test_every_subscriber_of_a_stream_is_woken() -> None:
    hub = MemoryHub()
    async with (
        hub.subscribe("s") as first,
        hub.subscribe("s") as second,
        hub.subscribe("s") as third,
    ):
        waiters = [
            asyncio.create_task(sub.wait(beyond=0, timeout=2)) for sub in (first, second, third)
        ]
        await asyncio.sleep(0)
        hub.publish(progress("s", 1))
        events = await asyncio.gather(*waiters)
    assert [e.size if e else None for e in events] == [1, 1, 1]


async def test_publish_before_anyone_subscribes_is_not_kept() -> None:
    hub = MemoryHub()
    hub.publish(progress("s", 3))
    async with hub.subscribe("s") as sub:
        assert sub.latest is None


async def test_channel_is_forgotten_after_last_subscriber_leaves() -> None:
    hub = MemoryHub()
    async with hub.subscribe("s"):
        hub.publish(progress("s", 3))
    async with hub.subscribe("s") as again:
        assert again.latest is None


async def test_feed_carries_lifecycle_events_in_order_without_progress() -> None:
    hub = MemoryHub()
    async with hub.feed() as feed:
        hub.publish(lifecycle(EventKind.CREATED, "a"))
        hub.publish(progress("a", 5))
        hub.publish(lifecycle(EventKind.COMPLETED, "a", 5))
        hub.publish(lifecycle(EventKind.CREATED, "b"))
        hub.publish(lifecycle(EventKind.DELETED, "b"))
        seen = []
        iterator = aiter(feed)
        for _ in range(4):
            seen.append(await asyncio.wait_for(anext(iterator), 1))
    assert [(e.kind, e.stream_id) for e in seen] == [
        (EventKind.CREATED, "a"),
        (EventKind.COMPLETED, "a"),
        (EventKind.CREATED, "b"),
        (EventKind.DELETED, "b"),
    ]


async def test_feed_waits_for_events_published_later() -> None:
    hub = MemoryHub()
    async with hub.feed() as feed:
        iterator = aiter(feed)
        pending = asyncio.create_task(anext(iterator))
        await asyncio.sleep(0)
        assert not pending.done()
        hub.publish(lifecycle(EventKind.CREATED, "late"))
        event = await asyncio.wait_for(pending, 1)
    assert event.stream_id == "late"


async def test_feed_sees_only_events_after_it_was_opened() -> None:
    hub = MemoryHub()
    hub.publish(lifecycle(EventKind.CREATED, "before"))
    async with hub.feed() as feed:
        hub.publish(lifecycle(EventKind.CREATED, "after"))
        event = await asyncio.wait_for(anext(aiter(feed)), 1)
    assert event.stream_id == "after"


async def test_feed_that_falls_too_far_behind_is_ended_after_its_backlog() -> None:
    hub = MemoryHub()
    async with hub.feed() as feed:
        for n in range(FEED_BACKLOG + 5):
            hub.publish(lifecycle(EventKind.CREATED, f"s{n}"))
        received = [event async for event in feed]
    assert len(received) == FEED_BACKLOG
    assert received[0].stream_id == "s0"


async def test_hub_close_ends_open_feeds() -> None:
    hub = MemoryHub()
    async with hub.feed() as feed:
        consumer = asyncio.create_task(_drain(feed))
        hub.publish(lifecycle(EventKind.CREATED, "x"))
        await asyncio.sleep(0)
        await hub.close()
        received = await asyncio.wait_for(consumer, 1)
    assert [e.stream_id for e in received] == ["x"]


async def _drain(feed: object) -> list[HubEvent]:
    return [event async for event in feed]  # type: ignore[attr-defined]
