from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from app.client.buffer import MAX_CHUNK, SendBuffer


@pytest.fixture
def buffer() -> Iterator[SendBuffer]:
    buf = SendBuffer(capacity=1 << 20, linger=0.0)
    yield buf
    with buf.cond:
        buf.stop()


def put(buffer: SendBuffer, data: bytes) -> int:
    with buffer.cond:
        return buffer.put(memoryview(data))


def test_frames_are_chunked_and_end_with_the_terminator(buffer: SendBuffer) -> None:
    put(buffer, b"hello")
    assert buffer.frames() == (b"5\r\nhello\r\n", False, None)
    assert buffer.frames() == (b"", False, None)
    with buffer.cond:
        buffer.finish()
    assert buffer.frames() == (b"0\r\n\r\n", True, None)


def test_large_writes_are_cut_into_bounded_chunks(buffer: SendBuffer) -> None:
    put(buffer, b"x" * (MAX_CHUNK + 10))
    first, _, _ = buffer.frames()
    assert first.startswith(b"%x\r\n" % MAX_CHUNK)
    second, _, _ = buffer.frames()
    assert second == b"a\r\n" + b"x" * 10 + b"\r\n"


def test_a_full_buffer_takes_nothing_until_acknowledged() -> None:
    buffer = SendBuffer(capacity=10, linger=0.0)
    try:
        assert put(buffer, b"0123456789abc") == 10
        assert put(buffer, b"more") == 0
        buffer.frames()
        with buffer.cond:
            assert buffer.acknowledge(4)
            assert bytes(buffer.data) == b"456789"
            assert not buffer.acknowledge(3)  # never backwards
            assert buffer.acknowledge(99) and buffer.base == 10  # never past what was sent
        assert put(buffer, b"more") == 4
    finally:
        with buffer.cond:
            buffer.stop()


def test_rewind_resends_from_the_servers_offset(buffer: SendBuffer) -> None:
    put(buffer, b"abcdef")
    buffer.frames()
    with buffer.cond:
        buffer.rewind(2)
    assert buffer.frames() == (b"4\r\ncdef\r\n", False, None)


def test_a_lone_small_write_waits_at_most_the_linger() -> None:
    buffer = SendBuffer(capacity=1 << 20, linger=0.05)
    try:
        put(buffer, b"line\n")
        frames, _, due = buffer.frames()
        assert frames == b"" and due is not None and due - time.monotonic() <= 0.05
        time.sleep(max(0.0, due - time.monotonic()))
        assert buffer.frames()[0] == b"5\r\nline\n\r\n"
    finally:
        with buffer.cond:
            buffer.stop()
