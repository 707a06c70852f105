"""A finished stream's replay in a content coding (issue 12).

The content, as the reader reads it (checked block by block), is compressed
as it is sent: one zstd frame or one gzip member for the whole body, a block
at a time in a thread, so memory stays a block and the coder's window and the
event loop never compresses.

Why not pass the stored zstd frames through (many frames back to back are a
valid zstd stream)? httpx 0.28-0.29's decoder, which Python clients use by
default (it asks for zstd once zstandard is installed, and Weft depends on
it), fails when a read ends exactly at the end of a frame ("cannot use a
decompressobj multiple times"): found by tests/e2e/test_compression.py. One
frame per response decodes everywhere.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Protocol

import anyio.to_thread
import zstandard

from app.streams.reader import StreamReader

ZSTD_LEVEL = 1  # on the fly: as small as level 3 on CI logs (5.23 against 5.25), 1.5x faster
GZIP_LEVEL = 1  # level 6 is 3x slower (43 MB/s a core on CI logs) for 1.3x smaller


class _Coder(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


def _coder(coding: str) -> _Coder:
    if coding == "zstd":
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
    # 16 + window bits: a gzip wrapper (RFC 1952), not a zlib one.
    return zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)


async def encoded(reader: StreamReader, coding: str) -> AsyncIterator[bytes]:
    """reader's bytes encoded with coding (zstd or gzip). A body that is cut
    stays cut: the coding's end is sent only after the last byte."""
    coder = _coder(coding)
    async for chunk in reader:
        out = await anyio.to_thread.run_sync(coder.compress, bytes(chunk))
        if out:
            yield out
    yield coder.flush()
