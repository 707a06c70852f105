"""Block checksums of segment files (app/storage/blocks.py) and how
LocalSegmentStore uses them on write, read, trim and resume."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from app.errors import CorruptBlock
from app.storage import segments
from app.storage.blocks import (
    BLOCK,
    Flaw,
    Running,
    Sums,
    crc,
    parse,
    scan,
    sums_of,
    verify,
)
from app.storage.segments import LocalSegmentStore

SEGMENT = 4 * BLOCK + 1000  # not a whole number of blocks: every segment ends in a partial one


def test_running_sums_match_the_sums_of_the_whole_whatever_the_chunks() -> None:
    data = random.Random(1).randbytes(3 * BLOCK + 777)
    running = Running()
    sidecar = bytearray()
    rng = random.Random(2)
    pos = 0
    while pos < len(data):
        piece = data[pos : pos + rng.randrange(1, 2 * BLOCK)]
        at, record = running.add(piece)
        sidecar[at:] = record  # what pwrite at `at` leaves in the file
        pos += len(piece)
    assert parse(bytes(sidecar)) == sums_of(data)
    assert sums_of(data).covered == len(data)
    assert len(sidecar) == 3 * 4 + 8


def test_parse_refuses_what_is_not_a_sidecar() -> None:
    sums = Sums(bytes(range(8)), 5, 9)
    assert parse(sums.encode()) == sums and sums.expected(1) == (BLOCK, 0x04050607)
    assert parse(b"") is None
    assert parse(b"\0" * 9) is None  # torn
    assert parse(Sums(b"", BLOCK, 0).encode()) is None  # a tail of a whole block


def test_verify_finds_each_kind_of_flaw() -> None:
    data = bytearray(random.Random(3).randbytes(2 * BLOCK + 100))
    sums = sums_of(data)
    assert verify(sums, data, 0, 3) == (len(data), None)
    assert verify(sums, data[BLOCK:], 1, 2) == (BLOCK + 100, None)

    flipped = bytearray(data)
    flipped[BLOCK + 7] ^= 1
    good, bad = verify(sums, flipped, 0, 3)
    assert (good, bad is not None and (bad.block, bad.at, bad.flaw)) == (
        BLOCK,
        (1, BLOCK, Flaw.CHECKSUM),
    )

    good, bad = verify(sums, data[: 2 * BLOCK + 50], 0, 3)
    assert (good, bad is not None and (bad.block, bad.flaw)) == (2 * BLOCK, (2, Flaw.TRUNCATED))

    good, bad = verify(sums, data + b"garbage", 0, 3)
    assert (good, bad is not None and (bad.at, bad.flaw)) == (
        len(data),
        (len(data), Flaw.UNCHECKED),
    )


def test_scan_reads_a_file_a_block_at_a_time(tmp_path: Path) -> None:
    data = os.urandom(2 * BLOCK + 5)
    path = tmp_path / "segment"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert scan(fd, len(data)) == sums_of(data)
        assert scan(fd, BLOCK) == sums_of(data[:BLOCK])
        assert scan(fd, 10 * BLOCK) == sums_of(data)  # the file ends first
    finally:
        os.close(fd)
    assert crc(data[:10], crc(b"")) == crc(data[:10])


async def written(tmp_path: Path, data: bytes, *, close: bool = True) -> LocalSegmentStore:
    store = LocalSegmentStore(tmp_path, segment_bytes=SEGMENT)
    await store.create("k")
    writer = await store.open_writer("k")
    rng = random.Random(len(data))
    pos = 0
    while pos < len(data):
        piece = data[pos : pos + rng.randrange(1, 100_000)]
        await writer.append(piece)
        pos += len(piece)
    if close:
        await writer.close()
    return store


async def read_all(store: LocalSegmentStore, offset: int, end: int, limit: int) -> bytes:
    out = b""
    while offset < end:
        data = await store.read("k", offset, min(limit, end - offset))
        if not data:
            break
        out += data
        offset += len(data)
    return out


async def test_reads_anywhere_return_exactly_the_stored_bytes(tmp_path: Path) -> None:
    data = os.urandom(2 * SEGMENT + 3 * BLOCK + 11)
    store = await written(tmp_path, data)
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == [
        "00000000",
        "00000000.crc",
        "00000001",
        "00000001.crc",
        "00000002",
        "00000002.crc",
    ]
    rng = random.Random(4)
    for _ in range(50):
        limit = rng.choice([1, 1000, BLOCK, 1 << 20])
        start = rng.randrange(len(data))
        end = rng.randrange(start, min(len(data), start + 200 * limit) + 1)
        assert await read_all(store, start, end, limit) == data[start:end]


async def test_a_bad_block_raises_after_the_good_bytes_before_it(tmp_path: Path) -> None:
    data = os.urandom(SEGMENT + 2 * BLOCK)
    store = await written(tmp_path, data)
    path = tmp_path / "k" / "00000001"
    raw = bytearray(path.read_bytes())
    raw[BLOCK + 1] ^= 0x80
    path.write_bytes(raw)

    start = SEGMENT + 100
    assert await store.read("k", start, 1 << 20) == data[start : SEGMENT + BLOCK]
    with pytest.raises(CorruptBlock) as caught:
        await store.read("k", SEGMENT + BLOCK + 50, 10)
    exc = caught.value
    assert (exc.segment, exc.block, exc.offset, exc.uncovered) == (1, 1, SEGMENT + BLOCK, False)
    assert await store.read("k", 0, 1000) == data[:1000]  # another segment is fine


async def test_the_segment_being_filled_is_not_verified_and_the_rest_is(tmp_path: Path) -> None:
    data = os.urandom(SEGMENT + BLOCK)
    store = await written(tmp_path, data, close=False)
    for name in ("00000000", "00000001"):
        path = tmp_path / "k" / name
        raw = bytearray(path.read_bytes())
        raw[5] ^= 1
        path.write_bytes(raw)
    assert await store.read("k", SEGMENT, 10) != data[SEGMENT : SEGMENT + 10]  # trusted as written
    with pytest.raises(CorruptBlock):
        await store.read("k", 0, 10)


async def test_trim_cuts_the_bytes_and_rebuilds_the_checksums(tmp_path: Path) -> None:
    data = os.urandom(2 * SEGMENT + 10)
    store = await written(tmp_path, data)
    await store.trim("k", SEGMENT + BLOCK + 3)
    assert await store.size("k") == SEGMENT + BLOCK + 3
    assert not (tmp_path / "k" / "00000002").exists()
    assert not (tmp_path / "k" / "00000002.crc").exists()
    sidecar = parse((tmp_path / "k" / "00000001.crc").read_bytes())
    assert sidecar == sums_of(data[SEGMENT : SEGMENT + BLOCK + 3])
    # A writer goes on from there and the checksums follow.
    writer = await store.open_writer("k")
    await writer.append(data[SEGMENT + BLOCK + 3 :])
    await writer.close()
    assert await read_all(store, 0, len(data), 1 << 20) == data


async def test_a_resumed_segment_without_checksums_gets_them(tmp_path: Path) -> None:
    data = os.urandom(BLOCK + 500)
    store = await written(tmp_path, data[:700])
    (tmp_path / "k" / "00000000.crc").unlink()  # as an older version left it
    assert await store.read("k", 0, 1000) == data[:700]  # unverified, but served
    writer = await store.open_writer("k")
    await writer.append(data[700:])
    await writer.close()
    assert parse((tmp_path / "k" / "00000000.crc").read_bytes()) == sums_of(data)
    assert await read_all(store, 0, len(data), 1 << 20) == data


async def test_cold_reads_run_in_a_thread_and_are_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(SEGMENT + 2 * BLOCK)
    store = await written(tmp_path, data)
    monkeypatch.setattr(segments._Read, "read_cached", lambda self: None)  # nothing cached
    threads: set[str] = set()
    read_rest = segments._Read.read_rest

    def spy(self: segments._Read) -> None:
        threads.add(threading.current_thread().name)
        read_rest(self)

    monkeypatch.setattr(segments._Read, "read_rest", spy)
    assert await read_all(store, 100, len(data), 1 << 20) == data[100:]
    assert threads and all(name.startswith("weft-cold-read") for name in threads)

    path = tmp_path / "k" / "00000001"
    raw = bytearray(path.read_bytes())
    raw[3] ^= 1
    path.write_bytes(raw)
    with pytest.raises(CorruptBlock):
        await store.read("k", SEGMENT, 10)


def test_a_read_takes_what_the_page_cache_holds_without_waiting(tmp_path: Path) -> None:
    data = os.urandom(4 * BLOCK)
    path = tmp_path / "file"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        cold = segments._Read(fd, 100, 10 * BLOCK)  # past the end: as much as the file has
        cold.read_cached()
        if cold.done:
            pytest.skip("this filesystem keeps the pages (tmpfs) or has no RWF_NOWAIT")
        cold.read_rest()
        assert cold.done and bytes(cold.view()) == data[100:]
        hot = segments._Read(fd, 0, 2 * BLOCK)
        hot.read_cached()
        assert hot.done and bytes(hot.view()) == data[: 2 * BLOCK]
    finally:
        os.close(fd)
