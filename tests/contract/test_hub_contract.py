"""Hub's contract (app/storage/base.py) on every implementation present: the
in-process hub and the NATS hub (against the machine's NATS server). For the
NATS hub these are the events of one node to its own subscribers; other nodes'
are in test_nats_hub.py."""

from __future__ import annotations

import asyncio

from app.storage.base import Feed, Hub
from app.streams.models import EventKind, HubEvent, StreamState

SHORT = 0.05  # a wait that is expected to time out


def event(kind: EventKind, stream_id: str, size: int = 0, key: str = "k") -> HubEvent:
    state = {
        EventKind.CREATED: StreamState.LIVE,
        EventKind.PROGRESS: StreamState.LIVE,
        EventKind.COMPLETED: StreamState.COMPLETE,
        EventKind.ABANDONED: StreamState.ABANDONED,
    }.get(kind)
    return HubEvent(kind, stream_id, key, size, state)


def progress(stream_id: str, size: int, key: str = "k") -> HubEvent:
    return event(EventKind.PROGRESS, stream_id, size, key)


async def test_subscriber_gets_the_newest_progress_beyond_its_position(hub: Hub) -> None:
    async with hub.subscribe("s") as sub:
        assert await sub.wait(beyond=0, timeout=0.01) is None
        for size in (1, 2, 3):
            hub.publish(progress("s", size))
        got = await sub.wait(beyond=0, timeout=2)
        assert got is not None and got.size == 3
        assert sub.latest is got
        # Nothing new since: the same event is not returned twice.
        assert await sub.wait(beyond=3, timeout=0.01) is None
        hub.publish(progress("other", 9))
        assert await sub.wait(beyond=3, timeout=0.01) is None


async def test_a_waiter_is_woken_by_a_publish(hub: Hub) -> None:
    async with hub.subscribe("s") as sub:
        waiter = asyncio.create_task(sub.wait(beyond=0, timeout=5))
        await asyncio.sleep(0)
        hub.publish(event(EventKind.DELETED, "s"))
        got = await waiter
        assert got is not None and got.kind is EventKind.DELETED


async def test_wait_ignores_progress_not_beyond_offset(hub: Hub) -> None:
    async with hub.subscribe("s") as sub:
        hub.publish(progress("s", 4))
        assert await sub.wait(beyond=4, timeout=SHORT) is None
        hub.publish(progress("s", 6))
        got = await sub.wait(beyond=4, timeout=1)
    assert got is not None and got.size == 6


async def test_wait_returns_lifecycle_event_even_without_new_bytes(hub: Hub) -> None:
    async with hub.subscribe("s") as sub:
        hub.publish(event(EventKind.COMPLETED, "s", size=4))
        got = await sub.wait(beyond=4, timeout=1)
    assert got is not None and got.kind is EventKind.COMPLETED
    assert got.size == 4


async def test_wait_times_out_with_none(hub: Hub) -> None:
    loop = asyncio.get_running_loop()
    async with hub.subscribe("s") as sub:
        started = loop.time()
        assert await sub.wait(beyond=0, timeout=SHORT) is None
    assert loop.time() - started >= SHORT * 0.9


async def test_events_of_other_streams_do_not_wake_a_subscriber(hub: Hub) -> None:
    async with hub.subscribe("a") as sub_a, hub.subscribe("b") as sub_b:
        hub.publish(progress("b", 9))
        assert await sub_a.wait(beyond=0, timeout=SHORT) is None
        assert sub_a.latest is None
        got = await sub_b.wait(beyond=0, timeout=1)
    assert got is not None and got.stream_id == "b"


async def test_every_subscriber_of_a_stream_is_woken(hub: Hub) -> None:
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


async def test_publish_before_anyone_subscribes_is_not_kept(hub: Hub) -> None:
    hub.publish(progress("s", 3))
    async with hub.subscribe("s") as sub:
        assert await sub.wait(beyond=0, timeout=SHORT) is None
        assert sub.latest is None


async def test_channel_is_forgotten_after_last_subscriber_leaves(hub: Hub) -> None:
    async with hub.subscribe("s"):
        hub.publish(progress("s", 3))
    async with hub.subscribe("s") as again:
        assert again.latest is None


async def test_stream_ids_with_dots_are_kept_apart(hub: Hub) -> None:
    # '.' separates NATS subject tokens: "a.b" must not be stream "a" then "b".
    async with hub.subscribe("a.b") as dotted, hub.subscribe("a..b.") as odd:
        hub.publish(progress("a.b", 2))
        hub.publish(progress("a..b.", 3))
        got, other = await dotted.wait(beyond=0, timeout=1), await odd.wait(beyond=0, timeout=1)
    assert got is not None and got.size == 2
    assert other is not None and other.size == 3


async def test_feed_carries_lifecycle_events_in_order_without_progress(hub: Hub) -> None:
    async with hub.feed() as feed:
        hub.publish(event(EventKind.CREATED, "a"))
        hub.publish(progress("a", 5))
        hub.publish(event(EventKind.COMPLETED, "a", 5))
        hub.publish(event(EventKind.CREATED, "b"))
        hub.publish(event(EventKind.DELETED, "b"))
        seen = await take(feed, 4)
    assert [(e.kind, e.stream_id) for e in seen] == [
        (EventKind.CREATED, "a"),
        (EventKind.COMPLETED, "a"),
        (EventKind.CREATED, "b"),
        (EventKind.DELETED, "b"),
    ]


async def test_feed_waits_for_events_published_later(hub: Hub) -> None:
    async with hub.feed() as feed:
        iterator = aiter(feed)
        pending = asyncio.create_task(anext(iterator))
        await asyncio.sleep(0)
        assert not pending.done()
        hub.publish(event(EventKind.CREATED, "late"))
        got = await asyncio.wait_for(pending, 2)
    assert got.stream_id == "late"


async def test_feed_sees_only_events_after_it_was_opened(hub: Hub) -> None:
    hub.publish(event(EventKind.CREATED, "before"))
    async with hub.feed() as feed:
        hub.publish(event(EventKind.CREATED, "after"))
        got = await asyncio.wait_for(anext(aiter(feed)), 2)
    assert got.stream_id == "after"


async def test_every_feed_gets_every_event(hub: Hub) -> None:
    async with hub.feed() as first, hub.feed() as second:
        hub.publish(event(EventKind.CREATED, "x"))
        hub.publish(event(EventKind.ABANDONED, "x"))
        one, two = await take(first, 2), await take(second, 2)
    expected = [EventKind.CREATED, EventKind.ABANDONED]
    assert [e.kind for e in one] == [e.kind for e in two] == expected


async def test_hub_close_ends_open_feeds(hub: Hub) -> None:
    async with hub.feed() as feed:
        consumer = asyncio.create_task(_drain(feed))
        hub.publish(event(EventKind.CREATED, "x"))
        await asyncio.sleep(0)
        await hub.close()
        received = await asyncio.wait_for(consumer, 5)
    assert [e.stream_id for e in received] == ["x"]


async def test_publish_after_close_is_ignored(hub: Hub) -> None:
    await hub.close()
    hub.publish(event(EventKind.CREATED, "x"))
    hub.publish(progress("x", 1))


async def take(feed: Feed, count: int) -> list[HubEvent]:
    iterator = aiter(feed)
    return [await asyncio.wait_for(anext(iterator), 2) for _ in range(count)]


async def _drain(feed: Feed) -> list[HubEvent]:
    return [item async for item in feed]
