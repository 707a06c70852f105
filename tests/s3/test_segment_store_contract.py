"""The SegmentStore contract, for every implementation present: the local
segment files and the tiered store on a real S3 server (SeaweedFS), with
5 MiB segments (S3's smallest part) so that a few MiB cross several."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest

from app.errors import CorruptBlock, StorageUnavailable, StreamNotFound
from app.storage.base import SegmentStore
from app.storage.s3_objects import S3ObjectStore
from app.storage.segments import LocalSegmentStore
from app.storage.tiered import TieredSegmentStore
from tests.s3.faultproxy import FaultProxy
from tests.s3.test_s3_objects import settings_for
from tests.s3server import S3Server

MiB = 1024 * 1024
SEG = 5 * MiB
PREFIX = "pre/ns"


def tiered(
    root: Path,
    server: S3Server,
    bucket: str,
    endpoint_url: str | None = None,
    compression: str = "none",
    **kw: Any,
) -> TieredSegmentStore:
    options: dict[str, Any] = {"cache_bytes": 0, "max_pending_bytes": 1 << 30}
    options.update(kw)
    local = LocalSegmentStore(
        root / "segments", segment_bytes=SEG, compression=compression, compress_sealed=False
    )
    return TieredSegmentStore(
        local,
        S3ObjectStore(bucket, settings_for(server, endpoint_url, retries=2), PREFIX),
        local_root=root / "segments",
        state_root=root / "s3",
        segment_bytes=SEG,
        **options,
    )


# "-zstd": the same contract with compression: zstd (issue 12).
@pytest.fixture(params=["local", "tiered", "local-zstd", "tiered-zstd"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SegmentStore]:
    implementation: SegmentStore
    kind, _, compression = str(request.param).partition("-")
    if kind == "local":
        implementation = LocalSegmentStore(
            tmp_path / "segments", segment_bytes=SEG, compression=compression or "none"
        )
    else:
        server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        implementation = tiered(tmp_path, server, bucket, compression=compression or "none")
    await implementation.start()
    try:
        yield implementation
    finally:
        await implementation.close()


@pytest.fixture
def raw(s3_server: S3Server) -> Iterator[Any]:
    client = botocore.session.get_session().create_client("s3", **s3_server.client_kwargs())
    yield client
    client.close()


def bucket_keys(raw: Any, bucket: str) -> list[str]:
    reply = raw.list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in reply.get("Contents", [])]


async def write(store: SegmentStore, key: str, data: bytes, piece: int = 300_007) -> None:
    writer = await store.open_writer(key)
    try:
        for at in range(0, len(data), piece):
            await writer.append(data[at : at + piece])
    finally:
        await writer.close()


async def read_all(store: SegmentStore, key: str, offset: int = 0, limit: int = MiB) -> bytes:
    out = bytearray()
    while True:
        data = await store.read(key, offset + len(out), limit)
        if not data:
            return bytes(out)
        out += data


async def settled(store: SegmentStore) -> None:
    if isinstance(store, TieredSegmentStore | LocalSegmentStore):
        await store.settled()


async def test_bytes_round_trip_across_segments(store: SegmentStore) -> None:
    data = os.urandom(2 * SEG + 12_345)
    await store.create("k1")
    assert await store.size("k1") == 0
    await write(store, "k1", data)
    await store.finish("k1")
    await settled(store)
    assert await store.size("k1") == len(data)
    assert await read_all(store, "k1") == data
    for offset in (0, 1, SEG - 10, SEG, SEG + 1, 2 * SEG - 10, 2 * SEG, len(data) - 1):
        assert await store.read("k1", offset, 10) == data[offset : offset + 10]
    # A read stops at the end of its segment, and at the stored end.
    assert await store.read("k1", SEG - 4, 100) == data[SEG - 4 : SEG]
    assert await store.read("k1", len(data), 100) == b""
    assert await store.read("k1", len(data) + SEG, 100) == b""


async def test_a_writer_resumes_at_the_stored_end(store: SegmentStore) -> None:
    data = os.urandom(SEG + 999)
    await store.create("k2")
    await write(store, "k2", data[:SEG])  # ends exactly on a segment boundary
    await settled(store)
    writer = await store.open_writer("k2")
    assert writer.size == SEG
    assert await writer.append(data[SEG:]) == len(data)
    await writer.sync()
    await writer.close()
    assert await read_all(store, "k2") == data


async def test_trim_cuts_inside_a_stored_segment(store: SegmentStore) -> None:
    data = os.urandom(2 * SEG + 100)
    await store.create("k3")
    await write(store, "k3", data)
    await settled(store)  # segments 0 and 1 are in the bucket and off the disk
    await store.trim("k3", SEG + 10)
    assert await store.size("k3") == SEG + 10
    assert await read_all(store, "k3") == data[: SEG + 10]
    more = os.urandom(SEG)
    await write(store, "k3", more)
    await store.finish("k3")
    await settled(store)
    assert await read_all(store, "k3") == data[: SEG + 10] + more


async def test_delete_removes_everything(store: SegmentStore) -> None:
    await store.create("k4")
    await write(store, "k4", os.urandom(SEG + 5))
    await store.finish("k4")
    await settled(store)
    await store.delete("k4")
    assert await store.read("k4", 0, 10) == b""
    with pytest.raises(StreamNotFound):
        await store.size("k4")
    with pytest.raises(StreamNotFound):
        await store.open_writer("k4")
    await store.delete("k4")  # a missing key is not an error
    await settled(store)


async def test_create_empties_an_existing_key(store: SegmentStore) -> None:
    await store.create("k5")
    await write(store, "k5", os.urandom(SEG + 1))
    await store.finish("k5")
    await settled(store)
    await store.create("k5")
    assert await store.size("k5") == 0
    assert await store.read("k5", 0, 10) == b""


async def test_check_passes(store: SegmentStore) -> None:
    await store.check()


# -- what only the tiered store does ----------------------------------------------------


async def test_full_segments_go_to_the_bucket_and_leave_the_disk(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str, raw: Any
) -> None:
    store = tiered(tmp_path, s3_server, s3_bucket)
    await store.start()
    try:
        data = os.urandom(2 * SEG + 77)
        await store.create("k")
        await write(store, "k", data)
        await store.settled()
        # Two full segments are up; the tail waits for the stream to finish.
        assert bucket_keys(raw, s3_bucket) == [
            f"{PREFIX}/k/00000000",
            f"{PREFIX}/k/00000000.crc",
            f"{PREFIX}/k/00000001",
            f"{PREFIX}/k/00000001.crc",
        ]
        for name in ("00000000", "00000001"):
            local = (tmp_path / "segments" / "k" / name).stat()
            assert (local.st_size, local.st_blocks) == (SEG, 0)  # evicted, length kept
        await store.finish("k")
        await store.settled()
        assert f"{PREFIX}/k/00000002" in bucket_keys(raw, s3_bucket)
        got = raw.get_object(Bucket=s3_bucket, Key=f"{PREFIX}/k/00000002")["Body"].read()
        assert got == data[2 * SEG :]
        # Finished and all in the bucket: nothing of it is left on local disk but
        # the markers that hold its size and the bytes of its objects (issue 12).
        assert not (tmp_path / "segments" / "k").exists()
        markers = tmp_path / "s3" / "k"
        assert sorted(p.name for p in markers.iterdir()) == ["finished", "retired", "stored"]
        assert (markers / "stored").read_text() == str(len(data))
        assert await store.stored_bytes("k") == len(data)
        assert await store.size("k") == len(data)
        assert await read_all(store, "k") == data  # ranged GETs
        await store.delete("k")
        await store.settled()
        assert bucket_keys(raw, s3_bucket) == []
    finally:
        await store.close()


async def test_an_empty_finished_stream_is_an_empty_object(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str, raw: Any
) -> None:
    store = tiered(tmp_path, s3_server, s3_bucket)
    await store.start()
    try:
        await store.create("e")
        await store.finish("e")
        await store.settled()
        assert bucket_keys(raw, s3_bucket) == [f"{PREFIX}/e/00000000", f"{PREFIX}/e/00000000.crc"]
        assert not (tmp_path / "segments" / "e").exists()
        assert await store.size("e") == 0
        assert await store.read("e", 0, 10) == b""
    finally:
        await store.close()


async def test_the_read_cache_keeps_recent_segments_within_cache_bytes(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    store = tiered(tmp_path, s3_server, s3_bucket, cache_bytes=SEG)
    await store.start()
    try:
        data = os.urandom(3 * SEG)
        await store.create("k")
        await write(store, "k", data)
        await store.settled()
        blocks = [(tmp_path / "segments" / "k" / f"{n:08d}").stat().st_blocks > 0 for n in range(3)]
        assert sorted(blocks) == [False, False, True]  # one segment fits (the last uploaded)
        assert await read_all(store, "k") == data
    finally:
        await store.close()


async def test_a_corrupt_object_is_never_served(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str, raw: Any
) -> None:
    store = tiered(tmp_path, s3_server, s3_bucket)
    await store.start()
    try:
        data = os.urandom(SEG + 10)
        await store.create("k")
        await write(store, "k", data)
        await store.settled()
        bad = bytearray(data[:SEG])
        bad[200_000] ^= 1  # in block 3
        raw.put_object(Bucket=s3_bucket, Key=f"{PREFIX}/k/00000000", Body=bytes(bad))
        assert await store.read("k", 0, 65536) == data[:65536]
        with pytest.raises(CorruptBlock) as caught:
            await store.read("k", 196_608, 65536)
        assert caught.value.offset == 196_608
    finally:
        await store.close()


async def test_bucket_down_bounds_pending_and_uploads_resume_after_a_restart(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str, raw: Any
) -> None:
    proxy = await FaultProxy(s3_server.port).start()
    try:
        proxy.fail_next = 1 << 30  # the bucket is down
        endpoint = proxy.endpoint_url
        store = tiered(tmp_path, s3_server, s3_bucket, endpoint, max_pending_bytes=2 * SEG)
        await store.start()
        data = os.urandom(2 * SEG)
        await store.create("k")
        await write(store, "k", data)
        assert store.pending_bytes == 2 * SEG
        writer = await store.open_writer("k")
        with pytest.raises(StorageUnavailable, match="max_pending_bytes"):
            await writer.append(b"more")
        await writer.close()
        await store.finish("k")
        with pytest.raises(StorageUnavailable, match="S3"):
            await store.check()
        assert await read_all(store, "k") == data  # still on local disk
        await store.close()
        assert bucket_keys(raw, s3_bucket) == []

        proxy.fail_next = 0  # back up; a new process resumes the uploads
        store = tiered(tmp_path, s3_server, s3_bucket, proxy.endpoint_url)
        await store.start()
        try:
            await asyncio.wait_for(store.settled(), 30)
            assert store.pending_bytes == 0
            assert f"{PREFIX}/k/00000001" in bucket_keys(raw, s3_bucket)
            assert not (tmp_path / "segments" / "k").exists()  # finished: retired
            assert await store.size("k") == len(data)
            assert await read_all(store, "k") == data
            await store.check()
        finally:
            await store.close()
    finally:
        await proxy.close()
