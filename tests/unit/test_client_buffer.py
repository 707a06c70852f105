from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from app.client.buffer import MAX_CHUNK, SendBuffer


@pytest.fixture
def buffer() -> Iterator[SendBuffer]:
    buf = SendBuffer(capacity=4 << 20, linger=0.0)
    yield buf
    with buf.cond:
        buf.stop()


def put(buffer: SendBuffer, data: bytes) -> int:
    with buffer.cond:
        return buffer.put(memoryview(data))


def frames(buffer: SendBuffer) -> tuple[bytes, bool, float | None]:
    """frames() with its views joined: the bytes that go on the wire."""
    out, end, due = buffer.frames()
    return b"".join(out), end, due


def test_frames_are_chunked_and_end_with_the_terminator(buffer: SendBuffer) -> None:
    put(buffer, b"hello")
    assert frames(buffer) == (b"5\r\nhello\r\n", False, None)
    assert frames(buffer) == (b"", False, None)
    with buffer.cond:
        buffer.finish()
    assert frames(buffer) == (b"0\r\n\r\n", True, None)


def test_large_writes_are_cut_into_bounded_chunks(buffer: SendBuffer) -> None:
    put(buffer, b"x" * (MAX_CHUNK + 10))
    first, _, _ = frames(buffer)
    assert first.startswith(b"%x\r\n" % MAX_CHUNK)
    second, _, _ = frames(buffer)
    assert second == b"a\r\n" + b"x" * 10 + b"\r\n"


def test_a_full_buffer_takes_nothing_until_acknowledged() -> None:
    buffer = SendBuffer(capacity=10, linger=0.0)
    try:
        assert put(buffer, b"0123456789abc") == 10
        assert put(buffer, b"more") == 0
        frames(buffer)
        with buffer.cond:
            assert buffer.acknowledge(4)
            assert buffer.copy(buffer.base, buffer.total) == b"456789"
            assert not buffer.acknowledge(3)  # never backwards
            assert buffer.acknowledge(99) and buffer.base == 10  # never past what was sent
        assert put(buffer, b"more") == 4
    finally:
        with buffer.cond:
            buffer.stop()


def test_rewind_resends_from_the_servers_offset(buffer: SendBuffer) -> None:
    put(buffer, b"abcdef")
    frames(buffer)
    with buffer.cond:
        buffer.rewind(2)
    assert frames(buffer) == (b"4\r\ncdef\r\n", False, None)


def test_a_lone_write_leaves_at_once_and_a_burst_waits_at_most_the_linger() -> None:
    buffer = SendBuffer(capacity=1 << 20, linger=0.05)
    try:
        put(buffer, b"line\n")
        assert frames(buffer)[0] == b"5\r\nline\n\r\n"  # after a quiet spell: at once
        put(buffer, b"next\n")  # right after a chunk: coalesced, for at most the linger
        out, _, due = frames(buffer)
        assert out == b"" and due is not None and due - time.monotonic() <= 0.05
        time.sleep(max(0.0, due - time.monotonic()))
        assert frames(buffer)[0] == b"5\r\nnext\n\r\n"
    finally:
        with buffer.cond:
            buffer.stop()


def test_the_ring_wraps_and_hands_out_the_bytes_in_order() -> None:
    buffer = SendBuffer(capacity=8, linger=0.0)
    try:
        assert put(buffer, b"abcdef") == 6
        assert frames(buffer)[0] == b"6\r\nabcdef\r\n"
        with buffer.cond:
            buffer.acknowledge(6)
        assert put(buffer, b"ghijklmn") == 8  # wraps: 2 bytes at the end, 6 at the start
        out, _, _ = buffer.frames()
        assert len(out) == 4 and b"".join(out) == b"8\r\nghijklmn\r\n"
        with buffer.cond:
            assert buffer.copy(6, 14) == b"ghijklmn"
            assert [len(v) for v in buffer.free_views(99)] == []
    finally:
        with buffer.cond:
            buffer.stop()
