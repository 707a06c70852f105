"""Block checksums of segment files (SPEC §8 "Integrity").

Each segment ``NNNNNNNN`` has a sidecar ``NNNNNNNN.crc``: the CRC32C of every
complete 64 KiB block of the segment (4 bytes each, big-endian), then one
8-byte record for the block being filled (its length and CRC32C; length 0 when
the segment ends on a block boundary). The writer rewrites only that record and
the CRCs of blocks completed since, once per append, so the sidecar covers
every byte an append acknowledged: bytes past what it covers were never
acknowledged (a crash between the two writes) or are not ours (garbage).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from enum import Enum

import crc32c as _crc32c

BLOCK = 64 * 1024
SUFFIX = ".crc"
_FULL = struct.Struct(">I")
_TAIL = struct.Struct(">II")


def crc(data: bytes | memoryview, value: int = 0) -> int:
    """CRC32C of data, continuing from value (the CRC of the bytes before it)."""
    return _crc32c.crc32c(data, value)


def sidecar_bytes(segment_bytes: int) -> int:
    """The largest sidecar a segment of that size has: one pread reads it whole."""
    return (segment_bytes // BLOCK) * _FULL.size + _TAIL.size


class Flaw(Enum):
    CHECKSUM = "checksum mismatch"
    TRUNCATED = "shorter than its checksums say"
    UNCHECKED = "bytes no checksum covers"


@dataclass(frozen=True)
class Bad:
    block: int  # index of the block within its segment
    at: int  # position in the segment of the first byte that is not good
    flaw: Flaw


@dataclass(frozen=True)
class Sums:
    """A segment's checksums: ``full`` holds the complete blocks' CRCs as the
    sidecar has them (unpacked only when looked at: a read checks a few)."""

    full: bytes = b""
    tail_length: int = 0
    tail_crc: int = 0

    @property
    def blocks(self) -> int:
        return len(self.full) // _FULL.size

    @property
    def covered(self) -> int:
        """How many bytes of the segment the checksums cover."""
        return self.blocks * BLOCK + self.tail_length

    def expected(self, block: int) -> tuple[int, int]:
        """(length, CRC) block should have; length 0 past the covered bytes."""
        count = self.blocks
        if block < count:
            return BLOCK, _FULL.unpack_from(self.full, block * _FULL.size)[0]
        if block == count:
            return self.tail_length, self.tail_crc
        return 0, 0

    def encode(self) -> bytes:
        return self.full + _TAIL.pack(self.tail_length, self.tail_crc)


def parse(raw: bytes) -> Sums | None:
    """A sidecar's contents; None when it is not one (a torn or foreign file)."""
    if len(raw) < _TAIL.size or (len(raw) - _TAIL.size) % _FULL.size:
        return None
    end = len(raw) - _TAIL.size
    tail_length, tail_crc = _TAIL.unpack_from(raw, end)
    if tail_length >= BLOCK:
        return None
    return Sums(raw[:end], tail_length, tail_crc)


def sums_of(data: bytes | memoryview) -> Sums:
    """The checksums of a segment holding data."""
    view = memoryview(data)
    count = len(view) // BLOCK
    full = b"".join(_FULL.pack(crc(view[n * BLOCK : (n + 1) * BLOCK])) for n in range(count))
    tail = view[count * BLOCK :]
    return Sums(full, len(tail), crc(tail))


def verify(sums: Sums, raw: bytes | memoryview, first: int, blocks: int) -> tuple[int, Bad | None]:
    """Check blocks first .. first+blocks-1 of a segment against sums. raw is
    what the file holds from block first on, read up to the end of the last of
    those blocks (shorter only where the file ends). Returns how many bytes of
    raw are good and, if any, the first bad spot."""
    good = 0
    view = memoryview(raw)  # slices without copies
    for block in range(first, first + blocks):
        length, want = sums.expected(block)
        piece = view[good : good + BLOCK]
        if len(piece) < length:
            return good, Bad(block, block * BLOCK, Flaw.TRUNCATED)
        if length and crc(piece[:length]) != want:
            return good, Bad(block, block * BLOCK, Flaw.CHECKSUM)
        if len(piece) > length:
            return good + length, Bad(block, block * BLOCK + length, Flaw.UNCHECKED)
        good += length
        if length < BLOCK:
            break  # the covered bytes end in this block
    return good, None


class Running:
    """The checksums of a segment being appended to."""

    def __init__(self, sums: Sums | None = None) -> None:
        sums = sums or Sums()
        self.blocks = sums.blocks  # complete blocks, whose CRCs are in the sidecar
        self.tail_length = sums.tail_length
        self.tail_crc = sums.tail_crc

    def state(self) -> tuple[int, int, int]:
        return self.blocks, self.tail_length, self.tail_crc

    def restore(self, state: tuple[int, int, int]) -> None:
        self.blocks, self.tail_length, self.tail_crc = state

    def add(self, data: bytes | memoryview) -> tuple[int, bytes]:
        """Take in data appended to the segment; return where in the sidecar to
        write what: the CRCs of the blocks data completed, then the new tail record."""
        at = self.blocks * _FULL.size
        if self.tail_length + len(data) < BLOCK:  # the usual case: within one block
            self.tail_crc = crc(data, self.tail_crc)
            self.tail_length += len(data)
            return at, _TAIL.pack(self.tail_length, self.tail_crc)
        out = bytearray()
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            take = min(BLOCK - self.tail_length, len(view) - pos)
            self.tail_crc = crc(view[pos : pos + take], self.tail_crc)
            self.tail_length += take
            pos += take
            if self.tail_length == BLOCK:
                out += _FULL.pack(self.tail_crc)
                self.blocks += 1
                self.tail_length = self.tail_crc = 0
        out += _TAIL.pack(self.tail_length, self.tail_crc)
        return at, bytes(out)


def scan(fd: int, length: int) -> Sums:
    """The checksums of the first length bytes of an open file (fewer where it
    ends), read a block at a time."""
    full = bytearray()
    tail = b""
    for pos in range(0, length, BLOCK):
        data = os.pread(fd, min(BLOCK, length - pos), pos)
        if len(data) < BLOCK:
            tail = data
            break
        full += _FULL.pack(crc(data))
    return Sums(bytes(full), len(tail), crc(tail))
