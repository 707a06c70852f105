"""Producer leases and the sweeper (DESIGN "Scale-out" step 2): a live stream
belongs to the node holding its lease; a node that dies without releasing it
is replaced, after lease_ttl, by another that rebuilds the stream from the
store; idle streams are abandoned and finished ones deleted by sweeper rounds.

Two StreamService instances share one MemoryLeases, one segment directory and
one SQLite file, as two nodes share PostgreSQL and S3.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.errors import LeaseLost, StorageUnavailable, StreamBusy
from app.storage.memory_hub import MemoryHub
from app.storage.memory_leases import MemoryLeases
from app.storage.metadata import SqlMetadataRepo
from app.storage.segments import LocalSegmentStore
from app.streams.models import EventKind, HubEvent, StreamState, utcnow
from app.streams.service import StreamService
from tests.unit.fakes import MemoryMetadataRepo, MemorySegmentStore, running_service


async def wait_until(check: Callable[[], Any], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Cluster:
    """Nodes on shared storage. A node started here can be stopped cleanly
    (close: its leases are released) or killed (its tasks stop, nothing is
    released or written: its leases run out)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.leases = MemoryLeases()
        self.nodes: list[StreamService] = []
        self.dead: list[StreamService] = []

    async def node(self, name: str, **settings: Any) -> StreamService:
        settings.setdefault("data_dir", self.root)
        settings.setdefault("durability", {"fsync": "never"})
        settings.setdefault("lease_ttl", 0.3)
        config = Settings.model_validate(settings)
        service = StreamService(
            settings=config,
            store=LocalSegmentStore(self.root / "segments", segment_bytes=config.segment_bytes),
            repo=SqlMetadataRepo(f"sqlite+aiosqlite:///{self.root / 'weft.db'}"),
            hub=MemoryHub(),
            leases=self.leases,
            node_id=name,
        )
        await service.start()
        self.nodes.append(service)
        return service

    async def expired(self, stream_id: str) -> None:
        """Wait until nobody holds the stream's lease (a killed node's ran out)."""
        deadline = asyncio.get_running_loop().time() + 10
        while await self.leases.holder(stream_id) is not None:
            assert asyncio.get_running_loop().time() < deadline, "the lease never expired"
            await asyncio.sleep(0.01)

    def kill(self, service: StreamService) -> None:
        for task in service._background:
            task.cancel()
        self.nodes.remove(service)
        self.dead.append(service)

    async def close(self) -> None:
        for service in self.nodes:
            await service.close()
        for service in self.dead:  # only what the process itself would lose
            for live in service._live.values():
                if live.writer is not None:
                    await live.writer.close()
            await service.store.close()
            await service.repo.close()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    nodes = Cluster(tmp_path)
    try:
        yield nodes
    finally:
        await nodes.close()


async def read_all(service: StreamService, stream_id: str) -> bytes:
    reader = await service.reader(stream_id, tail=False)
    return b"".join([bytes(chunk) async for chunk in reader])


@asynccontextmanager
async def lifecycle(service: StreamService) -> AsyncIterator[list[HubEvent]]:
    seen: list[HubEvent] = []

    async def collect() -> None:
        async with service.hub.feed() as feed:
            async for event in feed:
                seen.append(event)

    task = asyncio.ensure_future(collect())
    await asyncio.sleep(0)
    try:
        yield seen
    finally:
        task.cancel()


# -- takeover ----------------------------------------------------------------------------


async def test_a_dead_nodes_stream_is_taken_over_after_the_ttl_and_continues_byte_exact(
    cluster: Cluster,
) -> None:
    a = await cluster.node("a", lease_ttl=2.0)  # b starts well within it
    await a.create("s", {"m": 1})
    async with a.producer("s") as producer:
        await producer.append(b"first part, ")
        await producer.append(b"second part")
    held = await cluster.leases.holder("s")
    assert held is not None and (held.node_id, held.epoch) == ("a", 1)
    cluster.kill(a)  # no release, no checkpoint: the lease must run out

    b = await cluster.node("b")
    assert b.live_ids() == []  # recovery left a's stream alone while its lease lasts
    with pytest.raises(StreamBusy):
        async with b.producer("s", offset=23):
            pass
    row = await b.repo.get("s")
    assert row is not None and row.state is StreamState.LIVE

    await cluster.expired("s")
    info = await b.info("s", take_over=True)  # a resuming producer's HEAD
    assert (info.state, info.size) == (StreamState.LIVE, 23)
    assert b.live_ids() == ["s"]
    lease = await cluster.leases.holder("s")
    assert lease is not None and (lease.node_id, lease.epoch) == ("b", 2)
    async with b.producer("s", offset=23) as producer:
        await producer.append(b", third")
        done = await producer.complete()
    whole = b"first part, second part, third"
    assert (done.size, done.sha256) == (len(whole), hashlib.sha256(whole).hexdigest())
    assert await read_all(b, "s") == whole
    assert await cluster.leases.holder("s") is None  # forgotten once finished
    assert b.metrics.registry.get_sample_value("weft_takeovers_total") == 1


async def test_a_producer_attach_takes_over_an_expired_lease(cluster: Cluster) -> None:
    a = await cluster.node("a")
    await a.create("s", {})
    async with a.producer("s") as producer:
        await producer.append(b"abc")
    cluster.kill(a)
    b = await cluster.node("b")
    await cluster.expired("s")
    async with b.producer("s", offset=3) as producer:  # PATCH at 3, no HEAD first
        await producer.append(b"def")
        done = await producer.complete()
    assert done.sha256 == hashlib.sha256(b"abcdef").hexdigest()


async def test_a_clean_stop_releases_leases_for_an_immediate_takeover(cluster: Cluster) -> None:
    a = await cluster.node("a", lease_ttl=60)
    await a.create("s", {})
    async with a.producer("s") as producer:
        await producer.append(b"abc")
    cluster.nodes.remove(a)
    await a.close()
    b = await cluster.node("b", lease_ttl=60)
    assert b.live_ids() == ["s"]  # recovered at start, no wait for the ttl
    assert (await b.info("s")).size == 3


async def test_the_sweeper_abandons_a_dead_nodes_stream_abandon_after_its_last_activity(
    cluster: Cluster,
) -> None:
    a = await cluster.node("a", abandon_after=2.0)
    await a.create("s", {})
    async with a.producer("s") as producer:
        await producer.append(b"kept")
    left = utcnow()
    cluster.kill(a)
    b = await cluster.node("b", abandon_after=2.0)
    async with lifecycle(b) as events:
        await cluster.expired("s")
        await asyncio.sleep(0.6)  # sweeper rounds of b; the stream is not due yet
        assert b.live_ids() == [] and events == []
        assert await cluster.leases.holder("s") is None  # free for a resume anywhere
        await wait_until(lambda: any(e.kind is EventKind.ABANDONED for e in events), "abandon")
        abandoned_at = utcnow()
    # Counted from a's last checkpoint of the stream, not from b's start or the expiry.
    assert timedelta(seconds=2.0) <= abandoned_at - left < timedelta(seconds=3.0)
    info = await b.info("s")
    assert (info.state, info.size, info.sha256) == (
        StreamState.ABANDONED,
        4,
        hashlib.sha256(b"kept").hexdigest(),
    )


async def test_a_resume_through_any_node_wins_over_sweeping_nodes_until_the_stream_is_due(
    cluster: Cluster,
) -> None:
    a = await cluster.node("a", abandon_after=5.0)
    await a.create("s", {})
    async with a.producer("s") as producer:
        await producer.append(b"abc")
    cluster.kill(a)
    b = await cluster.node("b", abandon_after=5.0)
    await cluster.expired("s")
    await asyncio.sleep(2.5)  # several sweeper rounds of b
    c = await cluster.node("c", abandon_after=5.0)
    async with c.producer("s", offset=3) as producer:
        await producer.append(b"def")
        done = await producer.complete()
    assert done.sha256 == hashlib.sha256(b"abcdef").hexdigest()
    assert b.live_ids() == []


async def test_two_sweeping_nodes_abandon_a_dead_nodes_stream_once(cluster: Cluster) -> None:
    a = await cluster.node("a", abandon_after=0.4)
    await a.create("s", {})
    cluster.kill(a)
    b = await cluster.node("b", abandon_after=0.4)
    c = await cluster.node("c", abandon_after=0.4)
    async with lifecycle(b) as seen_b, lifecycle(c) as seen_c:
        await wait_until(
            lambda: any(e.kind is EventKind.ABANDONED for e in seen_b + seen_c), "abandonment"
        )
        await asyncio.sleep(0.5)  # a second abandonment would have come by now
        abandoned = [e for e in seen_b + seen_c if e.kind is EventKind.ABANDONED]
    assert len(abandoned) == 1
    assert b.live_ids() == [] and c.live_ids() == []
    assert await cluster.leases.holder("s") is None


# -- a lost lease ------------------------------------------------------------------------


async def test_a_lost_lease_refuses_the_producer_with_503_and_leaves_the_row_alone(
    cluster: Cluster,
) -> None:
    a = await cluster.node("a", lease_ttl=60)
    await a.create("s", {})
    async with a.producer("s") as producer:
        await producer.append(b"abc")
        lease = await cluster.leases.holder("s")
        assert lease is not None
        # Another node took the stream over meanwhile (a's lease ran out while
        # it was cut off from the lease store, say).
        await cluster.leases.release(lease)
        assert await cluster.leases.acquire("s", lease.key, "b", 60) is not None
        await a._renew_leases()
        with pytest.raises(LeaseLost) as caught:
            await producer.append(b"not stored")
        assert caught.value.status == 503
        with pytest.raises(LeaseLost):
            await producer.complete()
    assert a.live_ids() == []
    assert a.metrics.registry.get_sample_value("weft_leases_lost_total") == 1
    row = await a.repo.get("s")
    assert row is not None and row.state is StreamState.LIVE
    assert await a.store.size(lease.key) == 3


async def test_renewals_that_stop_working_stop_the_producer_before_the_lease_can_expire(
    cluster: Cluster,
) -> None:
    a = await cluster.node("a", lease_ttl=0.5)
    await a.create("s", {})

    async def unreachable(*_: Any) -> set[str]:
        raise StorageUnavailable("The lease store does not answer.")

    async with a.producer("s") as producer:
        await producer.append(b"abc")
        cluster.leases.renew = unreachable  # type: ignore[method-assign]
        await asyncio.sleep(0.55)
        with pytest.raises(LeaseLost):
            await producer.append(b"late")
    assert await read_all(a, "s") == b"abc"


# -- the sweeper on one node -------------------------------------------------------------


async def test_an_idle_stream_is_abandoned_after_its_deadline_not_before() -> None:
    async with running_service(abandon_after=1.0) as service:
        await service.create("s", {})
        async with service.producer("s") as producer:
            await producer.append(b"x")
            assert service.expires_at("s") is None  # producing: no deadline
        expires = service.expires_at("s")
        assert expires is not None
        assert timedelta(seconds=0.7) < expires - utcnow() <= timedelta(seconds=1.0)
        await asyncio.sleep(0.3)
        assert (await service.info("s")).state is StreamState.LIVE
        await wait_until(lambda: service.live_ids() == [], "abandonment")
        assert utcnow() >= expires
        info = await service.info("s")
        assert (info.state, info.size) == (StreamState.ABANDONED, 1)


async def test_retention_deletes_finished_streams_only() -> None:
    repo = MemoryMetadataRepo()
    async with running_service(repo=repo, retention={"complete_after": 0.1}) as service:
        await service.create("done", {})
        async with service.producer("done") as producer:
            await producer.complete()
        await service.create("live", {})
        await wait_until(lambda: "done" not in repo.rows, "retention")
        assert list(repo.rows) == ["live"]
        assert service.live_ids() == ["live"]


async def test_a_finish_after_another_node_finished_the_row_takes_that_nodes_word(
    cluster: Cluster,
) -> None:
    a = await cluster.node("a", lease_ttl=60)
    await a.create("s", {})
    async with a.producer("s") as producer:
        await producer.append(b"abc")
        # A node that (wrongly) thought it held the stream abandoned it first.
        row = await a.repo.get("s")
        assert row is not None
        now = utcnow()
        other = row.with_changes(state=StreamState.ABANDONED, size=3, finished_at=now)
        assert await a.repo.update(other)
        done = await producer.complete()
    assert (done.state, done.size) == (StreamState.ABANDONED, 3)
    assert a.live_ids() == []
    assert (await a.info("s")).state is StreamState.ABANDONED


class SlowStore(MemorySegmentStore):
    """Reads take their time, as a rehash of gigabytes does."""

    async def read(self, key: str, offset: int, limit: int) -> bytes:
        await asyncio.sleep(0.1)
        return await super().read(key, offset, limit)


async def test_a_rebuild_longer_than_the_lease_keeps_the_lease() -> None:
    store, repo = SlowStore(), MemoryMetadataRepo()
    data = bytes(range(256)) * 4096 * 5  # 5 MiB: five slow reads, 0.5 s against a 0.2 s lease
    async with running_service(store, repo) as service:
        await service.create("big", {})
        async with service.producer("big") as producer:
            await producer.append(data)
    async with running_service(store, repo, lease_ttl=0.2) as service:
        assert service.live_ids() == ["big"]
        async with service.producer("big", offset=len(data)) as producer:
            await producer.append(b"!")
            done = await producer.complete()
    assert done.sha256 == hashlib.sha256(data + b"!").hexdigest()


async def test_a_cleanly_stopped_nodes_idle_stream_is_still_abandoned_by_another(
    cluster: Cluster,
) -> None:
    a = await cluster.node("a", abandon_after=1.0, lease_ttl=60)
    b = await cluster.node("b", abandon_after=1.0, lease_ttl=60)
    await a.create("s", {})
    async with a.producer("s") as producer:
        await producer.append(b"left behind")
    cluster.nodes.remove(a)
    await a.close()
    async with lifecycle(b) as events:
        await wait_until(lambda: any(e.kind is EventKind.ABANDONED for e in events), "abandon")
    info = await b.info("s")
    assert (info.state, info.size) == (StreamState.ABANDONED, 11)


class SlowLeases(MemoryLeases):
    """Leases whose acquire takes a round trip, as a database's does."""

    async def acquire(self, stream_id: str, key: str, node_id: str, ttl: float) -> Any:
        await asyncio.sleep(0.05)
        return await super().acquire(stream_id, key, node_id, ttl)


async def test_a_resume_during_the_create_of_the_same_stream_does_not_take_it_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="weft.streams")
    async with running_service() as service:
        service.leases = SlowLeases()
        creating = asyncio.ensure_future(service.create("racy", {}))
        # The row exists before the stream is held here: a HEAD of a resuming
        # producer (info with take_over) arrives in between.
        await wait_until(lambda: "racy" in service.repo.rows, "the row")  # type: ignore[attr-defined]
        info = await service.info("racy", take_over=True)
        await creating
        held = service._live["racy"]
        assert info.size == 0
        async with service.producer("racy") as producer:
            await producer.append(b"once")
            assert service._live["racy"] is held
            await producer.complete()
    # Taken over, it would have been rebuilt and replaced under the create's producer.
    assert not [r for r in caplog.records if "stream_taken_over" in r.getMessage()]
