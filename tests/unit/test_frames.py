"""The compressed segment format (app/storage/frames.py, issue 12)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import zstandard

from app.storage import frames
from app.storage.frames import FRAME, BadFrames, compress_file, read_index, read_range


def log_like(size: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    lines = []
    total = 0
    while total < size:
        minute, second, milli = rng.randrange(60), rng.randrange(60), rng.randrange(1000)
        line = (
            f"2026-12-04T04:{minute:02d}:{second:02d}.{milli:03d}Z "
            f"\x1b[32mINFO\x1b[0m /builds/project/src/module_{rng.randrange(40)}/file.py:"
            f"{rng.randrange(900)} step {rng.randrange(10**6)} ok\n"
        ).encode()
        lines.append(line)
        total += len(line)
    return b"".join(lines)[:size]


def compressed(tmp_path: Path, content: bytes) -> tuple[int, frames.FrameIndex]:
    source, target = tmp_path / "00000000", tmp_path / "00000000.zst"
    source.write_bytes(content)
    compress_file(str(source), str(target))
    fd = os.open(target, os.O_RDONLY)
    return fd, read_index(fd)


def test_round_trip_of_a_log_is_smaller_and_exact(tmp_path: Path) -> None:
    content = log_like(3 * FRAME + 12345)
    fd, index = compressed(tmp_path, content)
    try:
        assert index.size == len(content)
        assert len(index.frames) == 4
        assert all(f.kind == frames.ZSTD for f in index.frames)
        assert read_range(fd, index, 0, len(content)) == content
        assert (tmp_path / "00000000.zst").stat().st_size < len(content) // 3
    finally:
        os.close(fd)


def test_ranges_across_frame_boundaries_decode_right(tmp_path: Path) -> None:
    content = log_like(3 * FRAME + 999)
    fd, index = compressed(tmp_path, content)
    try:
        for start, end in [
            (0, 1),
            (FRAME - 3, FRAME + 3),
            (FRAME - 1, 3 * FRAME + 1),
            (2 * FRAME, 2 * FRAME + 10),
            (3 * FRAME + 998, 3 * FRAME + 2000),
            (len(content), len(content) + 5),
        ]:
            assert read_range(fd, index, start, end) == content[start:end]
        assert [f.start for f in index.span(FRAME - 1, FRAME + 1)] == [0, FRAME]
    finally:
        os.close(fd)


def test_random_bytes_are_stored_raw_and_do_not_grow(tmp_path: Path) -> None:
    content = os.urandom(2 * FRAME + 77)
    fd, index = compressed(tmp_path, content)
    try:
        assert all(f.kind == frames.RAW for f in index.frames)
        grown = (tmp_path / "00000000.zst").stat().st_size - len(content)
        assert grown == 3 * 13 + frames.TRAILER_BYTES  # the footer only
        assert read_range(fd, index, FRAME - 5, FRAME + 5) == content[FRAME - 5 : FRAME + 5]
    finally:
        os.close(fd)


def test_empty_segment_round_trips(tmp_path: Path) -> None:
    fd, index = compressed(tmp_path, b"")
    try:
        assert index.size == 0 and read_range(fd, index, 0, 10) == b""
    finally:
        os.close(fd)


def test_stored_frames_concatenated_are_one_zstd_stream(tmp_path: Path) -> None:
    content = log_like(FRAME) + os.urandom(FRAME // 2) + b""
    fd, index = compressed(tmp_path, content)
    try:
        kinds = {f.kind for f in index.frames}
        assert kinds == {frames.RAW, frames.ZSTD}
        stream = b"".join(frames.as_zstd(f, os.pread(fd, f.stored, f.at)) for f in index.frames)
        reader = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
        assert reader.read() == content
    finally:
        os.close(fd)


def test_a_flipped_byte_is_refused_not_served(tmp_path: Path) -> None:
    content = log_like(2 * FRAME)
    fd, index = compressed(tmp_path, content)
    os.close(fd)
    path = tmp_path / "00000000.zst"
    data = bytearray(path.read_bytes())
    data[index.frames[1].at + 40] ^= 0xFF
    path.write_bytes(bytes(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_range(fd, index, 0, 100) == content[:100]
        with pytest.raises(BadFrames):
            read_range(fd, index, FRAME, FRAME + 100)
    finally:
        os.close(fd)


def test_a_torn_file_has_no_index(tmp_path: Path) -> None:
    fd, _index = compressed(tmp_path, log_like(FRAME))
    os.close(fd)
    path = tmp_path / "00000000.zst"
    path.write_bytes(path.read_bytes()[:-5])
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(BadFrames):
            read_index(fd)
    finally:
        os.close(fd)
