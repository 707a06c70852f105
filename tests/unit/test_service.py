from __future__ import annotations

import asyncio
import gc
import hashlib
import warnings
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import pytest

from app.errors import (
    InvalidInput,
    OffsetMismatch,
    RangeNotSatisfiable,
    StorageUnavailable,
    StreamBusy,
    StreamExists,
    StreamNotFound,
    StreamNotLive,
    TooLarge,
)
from app.metrics import Metrics
from app.storage.memory_hub import MemoryHub
from app.streams import service as service_module
from app.streams.models import EventKind, HubEvent, StreamInfo, StreamState
from app.streams.reader import StreamReader
from app.streams.service import StreamService
from tests.unit.fakes import (
    MemoryMetadataRepo,
    MemorySegmentStore,
    produce,
    running_service,
)


@pytest.fixture
async def service() -> AsyncIterator[StreamService]:
    async with running_service() as running:
        yield running


async def collect(reader: StreamReader, timeout: float = 2.0) -> bytes:
    async def read() -> bytes:
        return b"".join([chunk async for chunk in reader])

    return await asyncio.wait_for(read(), timeout)


async def next_event(feed: AsyncIterator[HubEvent], kind: EventKind, stream_id: str) -> HubEvent:
    async def find() -> HubEvent:
        async for event in feed:
            if event.kind is kind and event.stream_id == stream_id:
                return event
        raise AssertionError(f"feed ended before {kind} of {stream_id}")

    return await asyncio.wait_for(find(), 2)


# -- create ------------------------------------------------------------------------------


async def test_create_with_id_and_metadata_is_live_and_empty(service: StreamService) -> None:
    info, replaced = await service.create("job-1", {"buildId": 7})
    assert replaced is False
    now = await service.info("job-1")
    assert (now.id, now.state, now.size, now.sha256) == ("job-1", StreamState.LIVE, 0, None)
    assert now.metadata == {"buildId": 7}
    assert service.live_ids() == ["job-1"]
    assert info.key == now.key


async def test_create_without_id_generates_increasing_ids(service: StreamService) -> None:
    ids = [(await service.create(None, {}))[0].id for _ in range(20)]
    assert ids == sorted(ids) and len(set(ids)) == 20


async def test_create_with_bad_id_is_invalid_input_and_stores_nothing() -> None:
    store, repo = MemorySegmentStore(), MemoryMetadataRepo()
    async with running_service(store, repo) as service:
        with pytest.raises(InvalidInput):
            await service.create(".bad", {})
    assert repo.rows == {} and store.blobs == {}


async def test_create_taken_id_without_force_raises_and_keeps_old_stream() -> None:
    store = MemorySegmentStore()
    async with running_service(store) as service:
        await produce(service, "s", b"old")
        with pytest.raises(StreamExists) as caught:
            await service.create("s", {})
        assert caught.value.status == 409
        assert "force=true" in caught.value.message
        assert await collect(await service.reader("s")) == b"old"
        assert len(store.blobs) == 1  # the refused incarnation left no bytes behind


async def test_create_with_force_replaces_bytes_and_metadata() -> None:
    store = MemorySegmentStore()
    async with running_service(store) as service:
        await produce(service, "s", b"old", metadata={"v": 1})
        old_key = (await service.info("s")).key
        info, replaced = await service.create("s", {"v": 2}, force=True)
        assert replaced is True
        assert old_key not in store.blobs
        now = await service.info("s")
        assert (now.state, now.size, now.metadata, now.key) == (
            StreamState.LIVE,
            0,
            {"v": 2},
            info.key,
        )


async def test_force_on_free_id_reports_no_replacement(service: StreamService) -> None:
    _, replaced = await service.create("free", {}, force=True)
    assert replaced is False


# -- produce -----------------------------------------------------------------------------


async def test_complete_records_size_and_sha256(service: StreamService) -> None:
    await produce(service, "s", b"hello ", b"world")
    info = await service.info("s")
    assert info.state is StreamState.COMPLETE
    assert info.size == 11
    assert info.sha256 == hashlib.sha256(b"hello world").hexdigest()
    assert info.finished_at is not None and info.finished_at >= info.created_at
    assert service.live_ids() == []


async def test_second_producer_on_a_live_stream_is_busy(service: StreamService) -> None:
    await service.create("s", {})
    async with service.producer("s"):
        with pytest.raises(StreamBusy) as caught:
            async with service.producer("s", offset=0):
                pass
    assert caught.value.status == 409


async def test_resume_at_stored_size_appends(service: StreamService) -> None:
    await service.create("s", {})
    async with service.producer("s") as producer:
        await producer.append(b"abc")
    async with service.producer("s", offset=3) as producer:
        assert await producer.append(b"def") == 6
        await producer.complete()
    assert await collect(await service.reader("s")) == b"abcdef"


async def test_resume_at_wrong_offset_is_409_with_upload_offset(service: StreamService) -> None:
    await service.create("s", {})
    async with service.producer("s") as producer:
        await producer.append(b"abc")
    with pytest.raises(OffsetMismatch) as caught:
        async with service.producer("s", offset=2):
            pass
    assert caught.value.status == 409
    assert caught.value.headers == {"Upload-Offset": "3"}


async def test_producer_on_finished_stream_is_not_live(service: StreamService) -> None:
    await produce(service, "s", b"x")
    with pytest.raises(StreamNotLive) as caught:
        async with service.producer("s", offset=1):
            pass
    assert caught.value.status == 409


async def test_producer_on_missing_stream_is_not_found(service: StreamService) -> None:
    with pytest.raises(StreamNotFound):
        async with service.producer("missing"):
            pass


async def test_append_crossing_the_limit_stores_up_to_it_and_completes() -> None:
    async with running_service(limits={"stream_bytes": 5}) as service:
        await service.create("s", {})
        async with service.producer("s") as producer:
            await producer.append(b"abc")
            with pytest.raises(TooLarge) as caught:
                await producer.append(b"defgh")
        assert caught.value.status == 413
        info = await service.info("s")
        assert (info.state, info.size) == (StreamState.COMPLETE, 5)
        assert info.sha256 == hashlib.sha256(b"abcde").hexdigest()
        assert await collect(await service.reader("s")) == b"abcde"


async def test_append_after_delete_is_refused(service: StreamService) -> None:
    await service.create("s", {})
    async with service.producer("s") as producer:
        await producer.append(b"a")
        await service.delete("s")
        with pytest.raises(StreamNotFound):
            await producer.append(b"b")


# -- read --------------------------------------------------------------------------------


async def test_reader_attached_mid_write_gets_every_byte_once(service: StreamService) -> None:
    await service.create("s", {})
    async with service.producer("s") as producer:
        await producer.append(b"first ")
        reader = await service.reader("s")
        reading = asyncio.create_task(collect(reader))
        for n in range(50):
            await producer.append(b"%d," % n)
            if n % 7 == 0:
                await asyncio.sleep(0)  # let the reader catch up part of the time
        await producer.complete()
    expected = b"first " + b"".join(b"%d," % n for n in range(50))
    assert await reading == expected


async def test_reader_from_offset_on_live_stream_waits_for_the_bytes(
    service: StreamService,
) -> None:
    await service.create("s", {})
    async with service.producer("s") as producer:
        await producer.append(b"ab")
        reading = asyncio.create_task(collect(await service.reader("s", offset=4)))
        await producer.append(b"cdef")
        await producer.complete()
    assert await reading == b"ef"


async def test_reader_offset_beyond_finished_stream_is_416(service: StreamService) -> None:
    await produce(service, "s", b"abc")
    assert await collect(await service.reader("s", offset=3)) == b""
    with pytest.raises(RangeNotSatisfiable) as caught:
        await service.reader("s", offset=4)
    assert caught.value.headers["Content-Range"] == "bytes */3"


async def test_reader_without_tail_stops_at_current_size(service: StreamService) -> None:
    await service.create("s", {})
    async with service.producer("s") as producer:
        await producer.append(b"now")
        reader = await service.reader("s", tail=False)
        await producer.append(b"later")
        assert await collect(reader) == b"now"


async def test_delete_ends_tailing_reader_and_forgets_stream() -> None:
    store = MemorySegmentStore()
    async with running_service(store) as service:
        await service.create("s", {})
        async with service.producer("s") as producer:
            await producer.append(b"abc")
        chunks = aiter(await service.reader("s"))
        assert await asyncio.wait_for(anext(chunks), 2) == b"abc"
        waiting = asyncio.create_task(anext(chunks, b"<end>"))
        await asyncio.sleep(0)
        await service.delete("s")
        assert await asyncio.wait_for(waiting, 2) == b"<end>"
        with pytest.raises(StreamNotFound):
            await service.info("s")
        assert store.blobs == {}


async def test_replace_ends_readers_of_the_old_stream(service: StreamService) -> None:
    await service.create("s", {})
    async with service.producer("s") as producer:
        await producer.append(b"old")
    chunks = aiter(await service.reader("s"))
    assert await asyncio.wait_for(anext(chunks), 2) == b"old"
    waiting = asyncio.create_task(anext(chunks, b"<end>"))
    await asyncio.sleep(0)
    await service.create("s", {}, force=True)
    assert await asyncio.wait_for(waiting, 2) == b"<end>"


async def test_delete_missing_stream_is_not_found(service: StreamService) -> None:
    with pytest.raises(StreamNotFound) as caught:
        await service.delete("nope")
    assert caught.value.message == "The stream with ID nope does not exist"


async def test_delete_build_matches_metadata_string_number_and_id_prefix(
    service: StreamService,
) -> None:
    await produce(service, "build-42-a", b"x")
    await produce(service, "s-str", metadata={"buildId": "42"})
    await produce(service, "s-num", metadata={"buildId": 42})
    await service.create("s-live", {"buildId": 42})
    await produce(service, "build-421-a")
    await produce(service, "build-42")
    await produce(service, "s-other", metadata={"buildId": "421"})
    await produce(service, "s-nested", metadata={"build": {"buildId": 42}})
    deleted = await service.delete_build("42")
    assert sorted(deleted) == ["build-42-a", "s-live", "s-num", "s-str"]
    for gone in deleted:
        with pytest.raises(StreamNotFound):
            await service.info(gone)
    for kept in ("build-421-a", "build-42", "s-other", "s-nested"):
        assert (await service.info(kept)).id == kept
    assert await service.delete_build("42") == []


async def test_finishing_a_stream_leaves_no_unawaited_coroutine() -> None:
    # Each abandon timer that is cancelled (a producer attaches, the stream
    # completes) must not drop a coroutine that was created and never awaited.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with running_service() as service:
            await produce(service, "s", b"abc")
            await service.create("t", {})
            async with service.producer("t") as producer:
                await producer.append(b"x")
        gc.collect()
    unawaited = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert unawaited == []


# -- abandon and recover ---------------------------------------------------------------


async def test_stream_without_producer_is_abandoned_but_silent_producer_keeps_it_live() -> None:
    async with running_service(abandon_after=0.05) as service:
        async with service.hub.feed() as feed:
            await service.create("silent", {})
            async with service.producer("silent") as producer:
                await producer.append(b"abc")
                await service.create("idle", {})
                event = await next_event(aiter(feed), EventKind.ABANDONED, "idle")
                assert event.state is StreamState.ABANDONED
                # "silent" was created first and has had its producer all along.
                assert (await service.info("silent")).state is StreamState.LIVE
        idle = await service.info("idle")
        assert idle.state is StreamState.ABANDONED
        assert idle.sha256 == hashlib.sha256(b"").hexdigest()


async def test_abandoned_stream_keeps_its_bytes_and_digest() -> None:
    async with running_service(abandon_after=0.05) as service:
        async with service.hub.feed() as feed:
            await service.create("s", {})
            async with service.producer("s") as producer:
                await producer.append(b"kept")
            await next_event(aiter(feed), EventKind.ABANDONED, "s")
        info = await service.info("s")
        assert (info.state, info.size) == (StreamState.ABANDONED, 4)
        assert info.sha256 == hashlib.sha256(b"kept").hexdigest()
        assert await collect(await service.reader("s")) == b"kept"


async def test_restart_recovers_live_stream_size_from_the_store() -> None:
    store, repo = MemorySegmentStore(), MemoryMetadataRepo()
    async with running_service(store, repo) as service:
        await service.create("s", {})
        async with service.producer("s") as producer:
            await producer.append(b"abc")
        key = (await service.info("s")).key
    store.blobs[key] += b"def"  # bytes stored after the last checkpoint
    async with running_service(store, repo) as service:
        info = await service.info("s")
        assert (info.state, info.size) == (StreamState.LIVE, 6)
        async with service.producer("s", offset=6) as producer:
            await producer.append(b"g")
            done = await producer.complete()
    assert done.sha256 == hashlib.sha256(b"abcdefg").hexdigest()


async def test_a_start_finishes_in_the_store_what_a_crash_left_finished_only_in_the_database() -> (
    None
):
    store, repo = MemorySegmentStore(), MemoryMetadataRepo()
    async with running_service(store, repo) as service:
        await service.create("done", {})
        async with service.producer("done") as producer:
            await producer.append(b"abc")
            await producer.complete()
        await service.create("live", {})
        done, live = (await service.info("done")).key, (await service.info("live")).key
    # As a kill -9 between the row's write and store.finish leaves them: the store
    # never heard that "done" finished; "orphan" has no row at all.
    store.finished.clear()
    store.blobs["orphan"] = bytearray(b"x")
    async with running_service(store, repo) as service:
        assert store.finished == {done}
        assert (await service.info("live")).state is StreamState.LIVE
        assert live not in store.finished and "orphan" in store.blobs


class UnreadableStore(MemorySegmentStore):
    """Its bytes are somewhere that cannot be reached while down (a bucket)."""

    down = False

    async def read(self, key: str, offset: int, limit: int) -> bytes:
        if self.down:
            raise StorageUnavailable("The object store cannot be used.")
        return await super().read(key, offset, limit)

    async def check(self) -> None:
        if self.down:
            raise StorageUnavailable("S3 is not available.")


async def test_live_streams_whose_bytes_cannot_be_read_at_start_are_recovered_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service_module, "RECOVER_RETRY", (0.01, 0.02))
    store, repo = UnreadableStore(), MemoryMetadataRepo()
    async with running_service(store, repo) as service:
        for name in ("kept", "deleted"):
            await service.create(name, {})
            async with service.producer(name) as producer:
                await producer.append(b"abc")
    store.down = True
    async with running_service(store, repo) as service:  # starts all the same
        with pytest.raises(StorageUnavailable, match="not recovered yet"):
            async with service.producer("kept", offset=3):
                pass
        await service.delete("deleted")
        store.down = False
        for _ in range(200):
            if not service._recovering:
                break
            await asyncio.sleep(0.01)
        async with service.producer("kept", offset=3) as producer:
            await producer.append(b"d")
            done = await producer.complete()
        assert done.sha256 == hashlib.sha256(b"abcd").hexdigest()
        with pytest.raises(StreamNotFound):
            await service.info("deleted")


async def test_live_sizes_are_checkpointed_in_batches_while_producing() -> None:
    repo = MemoryMetadataRepo()
    checkpoints: list[list[tuple[str, str, int]]] = []
    record = repo.checkpoint

    async def spy(sizes: list[tuple[str, str, int]]) -> None:
        checkpoints.append(sorted(sizes))
        await record(sizes)

    repo.checkpoint = spy  # type: ignore[method-assign]
    async with running_service(repo=repo, checkpoint_interval=0.05) as service:
        infos = [(await service.create(f"c{n}", {}))[0] for n in range(3)]
        async with AsyncExitStack() as stack:
            producers = [await stack.enter_async_context(service.producer(i.id)) for i in infos]
            for producer in producers:
                await producer.append(b"12345")
            deadline = asyncio.get_running_loop().time() + 5
            while not checkpoints:
                assert asyncio.get_running_loop().time() < deadline, "no checkpoint"
                await asyncio.sleep(0.01)
            # One call for all three streams, each with its size; rows say so.
            assert checkpoints[0] == [(i.id, i.key, 5) for i in infos]
            assert [(await repo.get(i.id)).size for i in infos] == [5, 5, 5]  # type: ignore[union-attr]


async def test_a_remote_streams_reader_outlasts_a_position_the_store_cannot_give() -> None:
    # A stream another node writes: the reader polls its position, and a poll
    # that finds the tail store unavailable (JetStream slow or restarting) is
    # asked again at the next poll, not the end of the response.
    store = MemorySegmentStore()
    await store.create("k")
    store.blobs["k"] += b"abcdef"
    answers: list[tuple[int, StreamState] | Exception] = [
        (3, StreamState.LIVE),
        StorageUnavailable("JetStream did not answer"),
        (6, StreamState.COMPLETE),
    ]

    async def position(stream_id: str, key: str) -> tuple[int, StreamState] | None:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    now = datetime.now(UTC)
    reader = StreamReader(
        info=StreamInfo("s", "k", {}, StreamState.LIVE, 3, None, now, now),
        start=0,
        end=None,
        store=store,  # type: ignore[arg-type]
        hub=MemoryHub(),
        position=position,
        tail_timeout=None,
        metrics=Metrics(),
        poll=0.01,
    )
    assert await collect(reader) == b"abcdef"
    assert answers == []
