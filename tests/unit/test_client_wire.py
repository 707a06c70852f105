from __future__ import annotations

import pytest

from app.client.errors import Retryable
from app.client.wire import ResponseParser, request_head

CHUNKED = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 201 Created\r\nX-Stream-Id: abc\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n"
)


def feed_in_pieces(raw: bytes, size: int) -> ResponseParser:
    parser = ResponseParser()
    for start in range(0, len(raw), size):
        parser.feed(raw[start : start + size])
    return parser


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_chunked_response_split_anywhere_parses_the_same(size: int) -> None:
    parser = feed_in_pieces(CHUNKED, size)
    assert parser.complete
    assert parser.status == 201
    assert parser.headers["x-stream-id"] == "abc"
    assert bytes(parser.body) == b"hello, world"


def test_head_is_known_before_the_body_arrives() -> None:
    parser = feed_in_pieces(CHUNKED[: CHUNKED.index(b"5\r\n")], 4)
    assert parser.head_done and parser.status == 201
    assert not parser.complete


def test_cut_chunked_body_is_not_complete_even_at_eof() -> None:
    parser = feed_in_pieces(CHUNKED[:-9], 5)
    parser.feed_eof()
    assert not parser.complete


def test_content_length_and_no_body_statuses() -> None:
    parser = feed_in_pieces(b'HTTP/1.1 409 Conflict\r\nContent-Length: 13\r\n\r\n{"error":"x"}', 4)
    assert parser.complete and parser.status == 409 and bytes(parser.body) == b'{"error":"x"}'
    empty = feed_in_pieces(b"HTTP/1.1 204 No Content\r\nUpload-Offset: 9\r\n\r\n", 3)
    assert empty.complete and empty.headers["upload-offset"] == "9"


def test_body_delimited_by_close_completes_at_eof() -> None:
    parser = feed_in_pieces(b"HTTP/1.1 200 OK\r\n\r\nall of it", 4)
    assert not parser.complete
    parser.feed_eof()
    assert parser.complete and bytes(parser.body) == b"all of it"


def test_garbage_is_retryable_not_a_crash() -> None:
    with pytest.raises(Retryable):
        feed_in_pieces(b"SSH-2.0-OpenSSH\r\n\r\n", 100)


def test_request_head_is_crlf_framed() -> None:
    head = request_head("PATCH", "/stream/a", {"Upload-Offset": "3"})
    assert head == b"PATCH /stream/a HTTP/1.1\r\nUpload-Offset: 3\r\n\r\n"
