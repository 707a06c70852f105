"""Every state change is all or nothing between memory and the database (SPEC §7,
issue 9 item 3), and a full disk refuses new bytes but not deletes (SPEC §2).

The repository and the segment store fail on demand (tests/unit/fakes.py);
after a failure the stream must be exactly as before, and retrying the same
call must succeed.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.errors import InsufficientStorage, StorageUnavailable, StreamNotLive
from app.storage.memory_hub import MemoryHub
from app.streams.models import EventKind, HubEvent, StreamState
from app.streams.service import StreamService
from tests.unit.fakes import FailingMetadataRepo, FakeSpace, FullDiskSegmentStore

BROKEN = StorageUnavailable("The metadata database did not save the change.")


@asynccontextmanager
async def running(
    repo: FailingMetadataRepo | None = None,
    store: FullDiskSegmentStore | None = None,
    space: FakeSpace | None = None,
    **settings: Any,
) -> AsyncIterator[StreamService]:
    settings.setdefault("data_dir", Path("/nonexistent/weft-unit"))
    settings.setdefault("durability", {"fsync": "never"})
    service = StreamService(
        settings=Settings.model_validate(settings),
        store=store or FullDiskSegmentStore(),
        repo=repo or FailingMetadataRepo(),
        hub=MemoryHub(),
        space=space,
    )
    await service.start()
    try:
        yield service
    finally:
        await service.close()


async def lifecycle_events(service: StreamService, seconds: float = 0.05) -> list[HubEvent]:
    """The lifecycle events published within the next few moments."""
    seen: list[HubEvent] = []

    async def collect() -> None:
        async with service.hub.feed() as feed:
            async for event in feed:
                seen.append(event)

    task = asyncio.ensure_future(collect())
    await asyncio.sleep(seconds)
    task.cancel()
    return seen


async def wait_until(check: Any, what: str, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# -- completion --------------------------------------------------------------------------


@pytest.mark.parametrize("error", [InsufficientStorage(), BROKEN], ids=["507", "503"])
async def test_failed_completion_leaves_stream_live_and_the_same_call_completes_it(
    error: Exception,
) -> None:
    repo = FailingMetadataRepo()
    async with running(repo) as service:
        info, _ = await service.create("job", {})
        async with service.hub.feed() as feed:
            async with service.producer("job") as producer:
                await producer.append(b"abc")
                repo.fail("update", error)  # type: ignore[arg-type]
                with pytest.raises(type(error)):
                    await producer.complete()
                now = await service.info("job")
                assert (now.state, now.size, now.sha256) == (StreamState.LIVE, 3, None)
                assert repo.rows["job"].state is StreamState.LIVE
                assert service.live_ids() == ["job"]
                # Still the live stream's producer: its writer takes more bytes.
                assert await producer.append(b"def") == 6
            # A new producer attaches at the stored size (not 409 "complete, not live").
            async with service.producer("job", offset=6) as producer:
                done = await producer.complete()
            kinds = []
            while not kinds or kinds[-1] is not EventKind.COMPLETED:
                kinds.append((await anext(aiter(feed))).kind)
        assert (done.state, done.size) == (StreamState.COMPLETE, 6)
        assert done.sha256 == hashlib.sha256(b"abcdef").hexdigest()
        assert repo.rows["job"].sha256 == done.sha256
        assert kinds.count(EventKind.COMPLETED) == 1  # none for the failed attempt
        assert service.live_ids() == []
        assert info.key == done.key


async def test_completing_patch_retried_at_the_same_offset_gets_the_right_size_and_digest() -> None:
    repo = FailingMetadataRepo()
    async with running(repo) as service:
        await service.create("job", {})
        async with service.producer("job") as producer:
            await producer.append(b"x" * 100_004)
        repo.fail("update")
        with pytest.raises(InsufficientStorage):
            async with service.producer("job", offset=100_004) as producer:
                await producer.complete()
        async with service.producer("job", offset=100_004) as producer:
            done = await producer.complete()
        assert (done.state, done.size) == (StreamState.COMPLETE, 100_004)
        assert done.sha256 == hashlib.sha256(b"x" * 100_004).hexdigest()
        with pytest.raises(StreamNotLive):
            async with service.producer("job"):
                pass


async def test_failed_sync_before_completion_is_503_and_changes_nothing() -> None:
    store = FullDiskSegmentStore()
    async with running(store=store, durability={"fsync": "interval"}) as service:
        await service.create("job", {})
        async with service.producer("job") as producer:
            await producer.append(b"abc")
            store.sync_error = OSError(errno.EIO, "Input/output error")
            with pytest.raises(StorageUnavailable):
                await producer.complete()
            assert (await service.info("job")).state is StreamState.LIVE
            store.sync_error = None
            done = await producer.complete()
        assert (done.state, done.size) == (StreamState.COMPLETE, 3)


async def test_completion_at_the_declared_size_that_failed_is_finished_by_the_next_producer() -> (
    None
):
    repo = FailingMetadataRepo()
    async with running(repo) as service:
        await service.create("up", {}, expected_size=4)
        async with service.producer("up") as producer:
            repo.fail("update")
            with pytest.raises(InsufficientStorage):
                await producer.append(b"data")  # stored, but not recorded as complete
            assert (await service.info("up")).state is StreamState.LIVE
        async with service.producer("up", offset=4) as producer:  # tus: PATCH at 4, empty
            assert producer.size == 4
        info = await service.info("up")
        assert (info.state, info.size) == (StreamState.COMPLETE, 4)


async def test_failed_abandonment_keeps_stream_live_and_is_tried_again() -> None:
    repo = FailingMetadataRepo()
    async with running(repo, abandon_after=0.05) as service:
        await service.create("idle", {})
        repo.fail("update")
        await wait_until(lambda: repo.attempts["update"] >= 1, "the first abandonment")
        assert (await service.info("idle")).state is StreamState.LIVE
        assert service.live_ids() == ["idle"]
        await wait_until(lambda: repo.rows["idle"].state is StreamState.ABANDONED, "the retry")
        assert service.live_ids() == []


# -- declare_size, create, replace ---------------------------------------------------------


async def test_failed_declare_size_changes_nothing() -> None:
    repo = FailingMetadataRepo()
    async with running(repo) as service:
        await service.create("up", {})
        repo.fail("update")
        with pytest.raises(InsufficientStorage):
            await service.declare_size("up", 10)
        assert (await service.info("up")).expected_size is None
        assert repo.rows["up"].expected_size is None
        # Not stuck at 10: another size can still be declared.
        assert (await service.declare_size("up", 20)).expected_size == 20


async def test_failed_declare_size_that_completes_leaves_it_live_and_undeclared() -> None:
    repo = FailingMetadataRepo()
    async with running(repo) as service:
        await service.create("up", {})
        async with service.producer("up") as producer:
            await producer.append(b"12345")
        repo.fail("update")
        with pytest.raises(InsufficientStorage):
            await service.declare_size("up", 5)
        now = await service.info("up")
        assert (now.state, now.expected_size) == (StreamState.LIVE, None)
        done = await service.declare_size("up", 5)
        assert (done.state, done.size, done.expected_size) == (StreamState.COMPLETE, 5, 5)


async def test_failed_create_leaves_no_bytes_no_live_entry_and_no_event() -> None:
    repo, store = FailingMetadataRepo(), FullDiskSegmentStore()
    async with running(repo, store) as service:
        repo.fail("insert", BROKEN)
        events = asyncio.ensure_future(lifecycle_events(service))
        await asyncio.sleep(0)
        with pytest.raises(StorageUnavailable):
            await service.create("new", {})
        assert [e for e in await events if e.stream_id == "new"] == []
        assert store.blobs == {} and repo.rows == {} and service.live_ids() == []
        info, _ = await service.create("new", {})
        assert info.state is StreamState.LIVE


async def test_failed_replace_keeps_the_old_stream_its_producer_and_readers() -> None:
    repo = FailingMetadataRepo()
    async with running(repo) as service:
        old, _ = await service.create("job", {"v": 1})
        async with service.producer("job") as producer:
            await producer.append(b"old")
            reader = await service.reader("job")
            repo.fail("insert")
            with pytest.raises(InsufficientStorage):
                await service.create("job", {"v": 2}, force=True)
            now = await service.info("job")
            assert (now.key, now.metadata, now.size) == (old.key, {"v": 1}, 3)
            await producer.append(b"-more")
            await producer.complete()
        assert b"".join([chunk async for chunk in reader]) == b"old-more"


# -- delete and retention on a full disk ---------------------------------------------------


async def test_failed_delete_changes_nothing_and_the_producer_keeps_writing() -> None:
    repo, store = FailingMetadataRepo(), FullDiskSegmentStore()
    async with running(repo, store) as service:
        info, _ = await service.create("job", {})
        async with service.producer("job") as producer:
            await producer.append(b"abc")
            repo.fail("delete", BROKEN)
            with pytest.raises(StorageUnavailable):
                await service.delete("job")
            assert bytes(store.blobs[info.key]) == b"abc"
            assert await producer.append(b"d") == 4
        await service.delete("job")
        assert store.blobs == {} and repo.rows == {}


async def test_delete_on_a_full_database_frees_the_reserve_and_succeeds() -> None:
    repo, store = FailingMetadataRepo(), FullDiskSegmentStore()
    space = FakeSpace(repo=repo)
    async with running(repo, store, space) as service:
        info, _ = await service.create("job", {})
        repo.full = True
        await service.delete("job")
        assert space.released == 1
        assert repo.attempts["delete"] == 2 and repo.rows == {} and store.blobs == {}


async def test_delete_on_a_full_database_without_a_reserve_is_507_and_changes_nothing() -> None:
    repo, store = FailingMetadataRepo(), FullDiskSegmentStore()
    space = FakeSpace(repo=repo)
    space.reserved = False
    async with running(repo, store, space) as service:
        info, _ = await service.create("job", {})
        repo.full = True
        with pytest.raises(InsufficientStorage):
            await service.delete("job")
        assert info.key in store.blobs and service.live_ids() == ["job"]


async def test_retention_on_a_full_database_uses_the_reserve() -> None:
    repo = FailingMetadataRepo()
    space = FakeSpace(repo=repo)
    async with running(repo, space=space, retention={"complete_after": 0.05}) as service:
        info, _ = await service.create("old", {})
        async with service.producer("old") as producer:
            await producer.complete()
        repo.full = True
        await wait_until(lambda: "old" not in repo.rows, "retention to delete the stream")
        assert space.released == 1


# -- appends on a full disk ----------------------------------------------------------------


async def test_below_min_free_bytes_create_and_append_are_507_and_store_nothing() -> None:
    store = FullDiskSegmentStore()
    space = FakeSpace(free=1000, min_free=0)
    async with running(store=store, space=space) as service:
        info, _ = await service.create("job", {})
        space.min_free = 4096
        with pytest.raises(InsufficientStorage):
            await service.create("other", {})
        assert "other" not in service.live_ids() and len(store.blobs) == 1
        async with service.producer("job") as producer:
            with pytest.raises(InsufficientStorage):
                await producer.append(b"abc")
            assert producer.size == 0 and bytes(store.blobs[info.key]) == b""
            space.free = 10_000
            assert await producer.append(b"abc") == 3
        assert space.consumed_bytes == 3


async def test_enospc_mid_chunk_keeps_and_publishes_what_fitted_and_stays_live() -> None:
    store = FullDiskSegmentStore(room=5)
    async with running(store=store) as service:
        info, _ = await service.create("job", {})
        async with service.producer("job") as producer:
            with pytest.raises(InsufficientStorage) as caught:
                await producer.append(b"abcdefgh")
            assert "/data" not in caught.value.message
            assert producer.size == 5
            assert await service.position("job", info.key) == (5, StreamState.LIVE)
        assert bytes(store.blobs[info.key]) == b"abcde"
        store.room = 100
        async with service.producer("job", offset=5) as producer:
            await producer.append(b"fgh")
            done = await producer.complete()
        assert done.sha256 == hashlib.sha256(b"abcdefgh").hexdigest()


async def test_failed_checkpoint_when_a_producer_leaves_is_not_an_error_and_is_retried() -> None:
    repo = FailingMetadataRepo()
    async with running(repo, checkpoint_interval=0.02) as service:
        await service.create("job", {})
        repo.fail("checkpoint", times=2)
        async with service.producer("job") as producer:
            await producer.append(b"abc")
        await wait_until(lambda: repo.rows["job"].size == 3, "the checkpoint to be retried")


async def test_failed_retention_round_keeps_the_stream_and_the_next_round_deletes_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    repo = FailingMetadataRepo()
    async with running(repo, retention={"complete_after": 0.05}) as service:
        await service.create("old", {})
        async with service.producer("old") as producer:
            await producer.complete()
        repo.fail("delete", BROKEN)
        await wait_until(lambda: "old" not in repo.rows, "the next retention round")
        assert repo.attempts["delete"] == 2
    assert "retention_failed stream_id=old" in caplog.text
    assert "periodic_task_failed" not in caplog.text  # a warning, not a traceback
