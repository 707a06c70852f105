"""Compressed segments: independent frames with an index (compression at rest, issue 12).

A sealed segment ``NNNNNNNN`` becomes ``NNNNNNNN.zst``: its content cut into
pieces of ``FRAME`` bytes (the last shorter), each stored as one zstd frame, or
as the raw bytes when zstd would not make it smaller (random data never grows
by more than the footer), then a footer:

    entry * count   stored length u32, content length u32, kind u8, CRC32C u32
    trailer         content size u64, count u32, CRC32C of the entries u32, MAGIC

Because the frames are independent, a read of any range decodes only the
frames it overlaps (at most ~1 MiB each), and offsets stay those of the
uncompressed content. The CRC32C of each frame's content is checked after
decoding (SPEC §8: no byte that fails its checksum is served). zstd frames
back to back are one valid zstd stream; a raw frame becomes a zstd frame of
raw blocks (``raw_zstd_frame``), so a reader asking for zstd can get the
stored bytes as they are.
"""

from __future__ import annotations

import os
import struct
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate

import zstandard

from app.storage.blocks import crc

FRAME = 1024 * 1024  # content bytes per frame: what one ranged read decodes at most
LEVEL = 3  # zstd's default: ~5-10x on CI logs at hundreds of MB/s per core
SUFFIX = ".zst"
TEMP = ".zst.tmp"
MAGIC = b"WEFTZST1"
RAW, ZSTD = 0, 1
_ENTRY = struct.Struct(">IIBI")
_TRAILER = struct.Struct(">QII8s")
TRAILER_BYTES = _TRAILER.size
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_RAW_BLOCK = 128 * 1024  # zstd's largest block


class BadFrames(ValueError):
    """The footer or a frame does not check out."""


@dataclass(frozen=True)
class Frame:
    start: int  # content offset
    length: int  # content bytes
    at: int  # offset of its stored bytes in the file
    stored: int  # stored bytes
    kind: int
    crc: int


@dataclass(frozen=True)
class FrameIndex:
    frames: tuple[Frame, ...]

    @property
    def size(self) -> int:
        """The content size."""
        return self.frames[-1].start + self.frames[-1].length if self.frames else 0

    @property
    def stored(self) -> int:
        """Bytes of the frames (without the footer)."""
        return self.frames[-1].at + self.frames[-1].stored if self.frames else 0

    def span(self, start: int, end: int) -> tuple[Frame, ...]:
        """The frames that hold content start..end."""
        if start >= end or start >= self.size:
            return ()
        first = bisect_right([f.start for f in self.frames], start) - 1
        chosen = []
        for frame in self.frames[first:]:
            if frame.start >= end:
                break
            chosen.append(frame)
        return tuple(chosen)


def encode_frame(
    data: bytes | memoryview, compressor: zstandard.ZstdCompressor
) -> tuple[int, bytes]:
    """(kind, stored bytes) of one frame: zstd unless that is not smaller."""
    packed = compressor.compress(data)
    if len(packed) < len(data):
        return ZSTD, packed
    return RAW, bytes(data)


_local = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    """One per thread: making one per frame costs about as much as decoding a frame."""
    found: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if found is None:
        found = _local.decompressor = zstandard.ZstdDecompressor()
    return found


def decode_frame(frame: Frame, stored: bytes | memoryview) -> bytes:
    """The content of a frame from its stored bytes; BadFrames when it does not
    decode to content with the frame's checksum."""
    if len(stored) != frame.stored:
        raise BadFrames("frame cut short")
    if frame.kind == RAW:
        content = stored if isinstance(stored, bytes) else bytes(stored)
    else:
        try:
            content = _decompressor().decompress(stored, max_output_size=frame.length)
        except zstandard.ZstdError as exc:
            raise BadFrames(f"frame does not decode: {exc}") from None
    if len(content) != frame.length or crc(content) != frame.crc:
        raise BadFrames("checksum mismatch")
    return content


def footer(entries: list[tuple[int, int, int, int]]) -> bytes:
    """The footer for frames given as (stored, length, kind, crc)."""
    body = b"".join(_ENTRY.pack(*entry) for entry in entries)
    size = sum(entry[1] for entry in entries)
    return body + _TRAILER.pack(size, len(entries), crc(body), MAGIC)


def parse_trailer(raw: bytes) -> tuple[int, int]:
    """(content size, footer bytes) from a file's last TRAILER_BYTES."""
    if len(raw) != TRAILER_BYTES:
        raise BadFrames("no footer")
    size, count, _sum, magic = _TRAILER.unpack(raw)
    if magic != MAGIC:
        raise BadFrames("no footer")
    return size, count * _ENTRY.size + TRAILER_BYTES


def parse_footer(raw: bytes) -> FrameIndex:
    """The index from a whole footer (entries and trailer)."""
    size, length = parse_trailer(raw[-TRAILER_BYTES:])
    _size, count, want, _magic = _TRAILER.unpack(raw[-TRAILER_BYTES:])
    if len(raw) != length:
        raise BadFrames("footer cut short")
    body = raw[: count * _ENTRY.size]
    if crc(body) != want:
        raise BadFrames("footer checksum mismatch")
    entries = [_ENTRY.unpack_from(body, n * _ENTRY.size) for n in range(count)]
    starts = [0, *accumulate(e[1] for e in entries)]
    ats = [0, *accumulate(e[0] for e in entries)]
    frames = tuple(
        Frame(starts[n], length, ats[n], stored, kind, value)
        for n, (stored, length, kind, value) in enumerate(entries)
    )
    index = FrameIndex(frames)
    if index.size != size:
        raise BadFrames("footer sizes disagree")
    return index


def read_index(fd: int) -> FrameIndex:
    """The index of an open compressed segment."""
    return parse_footer(footer_of(fd))


def read_range(fd: int, index: FrameIndex, start: int, end: int) -> bytes:
    """Content start..end (fewer at the end) of an open compressed segment,
    decoding only the frames it overlaps."""
    frames = index.span(start, end)
    if not frames:
        return b""
    first, last = frames[0], frames[-1]
    stored = os.pread(fd, last.at + last.stored - first.at, first.at)
    if len(frames) == 1:  # a reader's usual read: no copies beyond the decoding
        content = decode_frame(first, stored)
        if start == first.start and end >= first.start + first.length:
            return content
        return content[start - first.start : end - first.start]
    view = memoryview(stored)
    parts = [decode_frame(f, view[f.at - first.at : f.at - first.at + f.stored]) for f in frames]
    content = b"".join(parts)
    return content[start - first.start : end - first.start]


def compress_file(
    source: str,
    target: str,
    *,
    check: Callable[[int, bytes], None] | None = None,
    level: int = LEVEL,
) -> int:
    """Write source, compressed, to target (fsynced); return target's size.
    check(offset, piece) sees every piece of the source first and may raise
    (a block that fails its checksum must not be compressed as good)."""
    compressor = zstandard.ZstdCompressor(level=level)
    entries: list[tuple[int, int, int, int]] = []
    fd_in = os.open(source, os.O_RDONLY)
    try:
        fd_out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            offset = 0
            while piece := os.pread(fd_in, FRAME, offset):
                if check is not None:
                    check(offset, piece)
                kind, stored = encode_frame(piece, compressor)
                _write_all(fd_out, stored)
                entries.append((len(stored), len(piece), kind, crc(piece)))
                offset += len(piece)
            _write_all(fd_out, footer(entries))
            os.fsync(fd_out)
            return os.fstat(fd_out).st_size
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def raw_zstd_frame(content: bytes | memoryview) -> Iterator[bytes]:
    """A zstd frame holding content as raw blocks (RFC 8878 §3.1.1): the
    single-segment header with a 4-byte content size, then blocks of up to
    128 KiB, the last one flagged."""
    yield _ZSTD_MAGIC + bytes([0xA0]) + struct.pack("<I", len(content))
    view = memoryview(content)
    if not view:
        yield (1).to_bytes(3, "little")  # one empty last raw block
        return
    for pos in range(0, len(view), _RAW_BLOCK):
        block = view[pos : pos + _RAW_BLOCK]
        last = pos + _RAW_BLOCK >= len(view)
        yield ((len(block) << 3) | int(last)).to_bytes(3, "little") + bytes(block)


def as_zstd(frame: Frame, stored: bytes) -> bytes:
    """A stored frame as a zstd frame (a raw one wrapped)."""
    return stored if frame.kind == ZSTD else b"".join(raw_zstd_frame(stored))


def footer_of(fd: int) -> bytes:
    """The whole footer of an open compressed segment (its index, as uploaded
    beside the segment's object)."""
    end = os.fstat(fd).st_size
    if end < TRAILER_BYTES:
        raise BadFrames("no footer")
    _size, length = parse_trailer(os.pread(fd, TRAILER_BYTES, end - TRAILER_BYTES))
    if length > end:
        raise BadFrames("footer larger than the file")
    return os.pread(fd, length, end - length)
