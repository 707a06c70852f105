"""LocalSegmentStore with compression: zstd (issue 12): sealed segments and a
finished stream's last one are compressed off the append path, reads and sizes
are those of the content, and a crash in the middle of a compression leaves a
state the next start settles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.errors import CorruptBlock
from app.storage import frames
from app.storage.segments import LocalSegmentStore
from tests.unit.test_frames import log_like

SEGMENT = 3 * frames.FRAME + 4096  # frames and segments do not line up


async def store_with(root: Path, content: bytes, *, finish: bool = True) -> LocalSegmentStore:
    store = LocalSegmentStore(root, segment_bytes=SEGMENT, compression="zstd")
    await store.start()
    await store.create("k")
    writer = await store.open_writer("k")
    for at in range(0, len(content), 300_000):
        await writer.append(content[at : at + 300_000])
    await writer.close()
    if finish:
        await store.finish("k")
    await settle(store)
    return store


async def settle(store: LocalSegmentStore) -> None:
    if store._worker is not None:
        await store._worker


async def read_all(store: LocalSegmentStore, start: int = 0, step: int = 1 << 20) -> bytes:
    out = bytearray()
    while data := await store.read("k", start + len(out), step):
        out += data
    return bytes(out)


async def test_sealed_and_finished_segments_are_compressed_and_read_back(tmp_path: Path) -> None:
    content = log_like(2 * SEGMENT + 5000)
    store = await store_with(tmp_path, content)
    names = sorted(p.name for p in (tmp_path / "k").iterdir())
    assert names == ["00000000.zst", "00000001.zst", "00000002.zst", "finished"]
    assert await store.size("k") == len(content)
    assert await read_all(store) == content
    for start in (1, frames.FRAME - 1, SEGMENT - 10, SEGMENT + frames.FRAME + 3):
        assert await read_all(store, start, 65536) == content[start:]
    assert await store.stored_bytes("k") < len(content) // 3
    await store.close()


async def test_a_live_stream_keeps_its_last_segment_raw(tmp_path: Path) -> None:
    content = log_like(SEGMENT + 5000)
    store = await store_with(tmp_path, content, finish=False)
    names = sorted(p.name for p in (tmp_path / "k").iterdir())
    assert names == ["00000000.zst", "00000001", "00000001.crc"]
    assert await read_all(store) == content
    await store.close()


async def test_random_bytes_stored_compressed_do_not_grow(tmp_path: Path) -> None:
    content = os.urandom(SEGMENT + 100)
    store = await store_with(tmp_path, content)
    assert await read_all(store) == content
    assert await store.stored_bytes("k") <= len(content) + 200
    await store.close()


async def test_compression_off_reads_compressed_data(tmp_path: Path) -> None:
    content = log_like(SEGMENT + 777)
    await (await store_with(tmp_path, content)).close()
    plain = LocalSegmentStore(tmp_path, segment_bytes=SEGMENT)
    await plain.start()
    assert await plain.size("k") == len(content)
    assert await read_all(plain) == content
    await plain.close()


async def test_compression_on_compresses_what_was_written_without(tmp_path: Path) -> None:
    content = log_like(SEGMENT + 777)
    plain = LocalSegmentStore(tmp_path, segment_bytes=SEGMENT)
    await plain.create("k")
    writer = await plain.open_writer("k")
    await writer.append(content)
    await writer.close()
    store = LocalSegmentStore(tmp_path, segment_bytes=SEGMENT, compression="zstd")
    await store.start()
    assert await store.unfinished() == ["k"]  # never finished with compression on
    await settle(store)
    assert (tmp_path / "k" / "00000000.zst").exists()
    assert (tmp_path / "k" / "00000001").exists()  # maybe live: the database decides
    await store.finish("k")
    await settle(store)
    names = sorted(p.name for p in (tmp_path / "k").iterdir())
    assert names == ["00000000.zst", "00000001.zst", "finished"]
    assert await read_all(store) == content
    await store.close()


@pytest.mark.parametrize("state", ["temp", "both", "checksums"])
async def test_a_start_settles_a_compression_a_crash_cut_off(tmp_path: Path, state: str) -> None:
    content = log_like(SEGMENT + 777)
    store = await store_with(tmp_path, content, finish=False)
    await store.close()
    directory = tmp_path / "k"
    packed = directory / "00000000.zst"
    from app.storage.packed import decompress_segment

    if state == "temp":  # died while writing the compressed file
        decompress_segment(directory, 0)
        (directory / "00000000.zst.tmp").write_bytes(b"half a frame")
    elif state == "both":  # died after the rename, before the raw file was removed
        data = packed.read_bytes()
        decompress_segment(directory, 0)
        packed.write_bytes(data)
    else:  # died after the raw file was removed, before its checksums were
        data = packed.read_bytes()
        decompress_segment(directory, 0)
        packed.write_bytes(data)
        (directory / "00000000").unlink()
    again = LocalSegmentStore(tmp_path, segment_bytes=SEGMENT, compression="zstd")
    await again.start()
    await settle(again)
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["00000000.zst", "00000001", "00000001.crc"]
    assert await again.size("k") == len(content)
    assert await read_all(again) == content
    await again.close()


async def test_a_corrupt_compressed_frame_is_never_served(tmp_path: Path) -> None:
    content = log_like(SEGMENT + 777)
    store = await store_with(tmp_path, content)
    await store.close()
    packed = tmp_path / "k" / "00000000.zst"
    data = bytearray(packed.read_bytes())
    data[100] ^= 0xFF
    packed.write_bytes(bytes(data))
    again = LocalSegmentStore(tmp_path, segment_bytes=SEGMENT, compression="zstd")
    with pytest.raises(CorruptBlock):
        await again.read("k", 10, 100)
    assert await again.read("k", frames.FRAME, 10) == content[frames.FRAME : frames.FRAME + 10]


async def test_trim_into_a_compressed_segment_keeps_the_bytes_before(tmp_path: Path) -> None:
    content = log_like(SEGMENT + 777)
    store = await store_with(tmp_path, content, finish=False)
    await store.trim("k", 1000)
    assert await store.size("k") == 1000
    assert await read_all(store) == content[:1000]
    await store.close()
