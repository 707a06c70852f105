"""Consuming a stream: GET and HEAD /stream/{id} (SPEC §3)."""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.e2e.helpers import (
    RawConnection,
    assert_json_error,
    finish_producer,
    get_bytes,
    make_dropped_stream,
    module_server,
    numbered_lines,
    open_producer,
    repr_digest,
    request_head,
    sha256_hex,
    summary,
    unique_id,
    wait_for_offset,
)
from tests.server import ServerProcess, raw_request

SEGMENT = 4096


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory.mktemp("consume"))


@pytest.fixture(scope="module")
def segmented(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory.mktemp("segmented"), segment_bytes=SEGMENT)


@pytest.fixture(scope="module")
def finished(server: ServerProcess) -> tuple[str, bytes, dict[str, object]]:
    """One complete stream, read by many tests: (id, content, metadata)."""
    stream_id = unique_id("finished")
    data = b"0123456789abcdefghij\n" * 3 + b"\x00\xff\x7f"
    metadata: dict[str, object] = {"job": "consume", "n": 3}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        headers = {"X-Stream-Metadata": json.dumps(metadata)}
        response = http.post(f"/stream/{stream_id}", content=data, headers=headers)
        assert response.status_code == 201
    return stream_id, data, metadata


def read_all(base_url: str, path: str) -> tuple[httpx.Response, bytes]:
    """GET in full with a client of its own (for use in threads)."""
    with httpx.Client(base_url=base_url, timeout=10) as http:
        response = http.get(path)
        return response, response.content


# -- finished streams ---------------------------------------------------------------


def test_finished_stream_get_has_exact_headers_and_content(
    client: httpx.Client, finished: tuple[str, bytes, dict[str, object]]
) -> None:
    stream_id, data, metadata = finished
    response = client.get(f"/stream/{stream_id}")
    assert response.status_code == 200
    assert response.content == data
    headers = response.headers
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-length"] == str(len(data))
    assert headers["etag"] == f'"{sha256_hex(data)}"'
    assert headers["accept-ranges"] == "bytes"
    assert headers["repr-digest"] == repr_digest(data)
    assert headers["x-stream-state"] == "complete"
    assert headers["x-stream-id"] == stream_id
    assert json.loads(headers["x-stream-metadata"]) == metadata
    assert "transfer-encoding" not in headers


def test_head_of_finished_stream_has_get_headers_and_upload_offset_and_no_body(
    server: ServerProcess, client: httpx.Client, finished: tuple[str, bytes, dict[str, object]]
) -> None:
    stream_id, data, _ = finished
    get = client.get(f"/stream/{stream_id}")
    raw = raw_request(
        server.port, request_head("HEAD", f"/stream/{stream_id}", {"Connection": "close"})
    )
    head_text, _, body = raw.partition(b"\r\n\r\n")
    assert body == b""
    lines = head_text.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    head = dict(line.lower().split(": ", 1) for line in lines[1:])
    for name in ("content-type", "content-length", "etag", "accept-ranges", "repr-digest"):
        assert head[name] == get.headers[name].lower(), name
    for name in ("x-stream-state", "x-stream-id", "x-stream-metadata"):
        assert head[name] == get.headers[name].lower(), name
    assert head["upload-offset"] == str(len(data))


def test_unknown_stream_is_404_with_exact_message(client: httpx.Client) -> None:
    stream_id = unique_id("nobody")
    response = client.get(f"/stream/{stream_id}")
    assert assert_json_error(response, 404) == f"The stream with ID {stream_id} does not exist"
    head = client.head(f"/stream/{stream_id}")
    assert head.status_code == 404
    assert head.content == b""


# -- offsets and ranges on finished streams -----------------------------------------


@pytest.mark.parametrize("offset", [0, 1, 20, 63])
def test_offset_on_finished_stream_starts_body_there(
    client: httpx.Client, finished: tuple[str, bytes, dict[str, object]], offset: int
) -> None:
    stream_id, data, _ = finished
    response = client.get(f"/stream/{stream_id}", params={"offset": offset})
    assert response.status_code == 200
    assert response.headers["x-stream-offset"] == str(offset)
    assert response.headers["content-length"] == str(len(data) - offset)
    assert response.content == data[offset:]


def test_offset_equal_to_size_of_finished_stream_is_empty_200(
    client: httpx.Client, finished: tuple[str, bytes, dict[str, object]]
) -> None:
    stream_id, data, _ = finished
    response = client.get(f"/stream/{stream_id}", params={"offset": len(data)})
    assert response.status_code == 200
    assert response.headers["x-stream-offset"] == str(len(data))
    assert response.headers["content-length"] == "0"
    assert response.content == b""


def test_offset_beyond_size_of_finished_stream_is_416(
    client: httpx.Client, finished: tuple[str, bytes, dict[str, object]]
) -> None:
    stream_id, data, _ = finished
    response = client.get(f"/stream/{stream_id}", params={"offset": len(data) + 1})
    assert_json_error(response, 416)


@pytest.mark.parametrize(
    "offset",
    [
        pytest.param("-1", id="negative"),
        pytest.param("abc", id="letters"),
        pytest.param("1.5", id="fraction"),
        pytest.param("", id="empty"),
        pytest.param("\u00b2", id="superscript-two"),
    ],
)
def test_malformed_offset_is_400(
    client: httpx.Client, finished: tuple[str, bytes, dict[str, object]], offset: str
) -> None:
    stream_id, _, _ = finished
    assert_json_error(client.get(f"/stream/{stream_id}", params={"offset": offset}), 400)


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-4", 0, 4),
        ("bytes=5-", 5, None),
        ("bytes=-3", -3, None),
        ("bytes=10-10", 10, 10),
        ("bytes=60-1000", 60, None),
    ],
)
def test_range_on_finished_stream_is_206_with_content_range(
    client: httpx.Client,
    finished: tuple[str, bytes, dict[str, object]],
    header: str,
    first: int,
    last: int | None,
) -> None:
    stream_id, data, _ = finished
    size = len(data)
    start = first % size
    end = size - 1 if last is None else last
    response = client.get(f"/stream/{stream_id}", headers={"Range": header})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {start}-{end}/{size}"
    assert response.headers["content-length"] == str(end - start + 1)
    assert response.content == data[start : end + 1]


@pytest.mark.parametrize("header", ["bytes=66-", "bytes=67-", "bytes=1000-2000", "bytes=-0"])
def test_unsatisfiable_range_is_416_with_size(
    client: httpx.Client, finished: tuple[str, bytes, dict[str, object]], header: str
) -> None:
    stream_id, data, _ = finished
    assert len(data) == 66
    response = client.get(f"/stream/{stream_id}", headers={"Range": header})
    assert_json_error(response, 416)
    assert response.headers["content-range"] == f"bytes */{len(data)}"


# -- live streams -------------------------------------------------------------------


def test_live_stream_response_is_chunked_without_content_length(server: ServerProcess) -> None:
    stream_id = unique_id("chunked")
    conn, head = open_producer(server.port, f"/stream/{stream_id}")
    with conn, RawConnection(server.port) as reader:
        assert head.status == 201
        conn.send_chunk(b"hello\n")
        reader.send(request_head("GET", f"/stream/{stream_id}"))
        response = reader.read_head()
        assert response.status == 200
        assert response.chunked
        assert "content-length" not in response.names()
        assert response.header("content-type") == "application/octet-stream"
        assert response.header("x-stream-state") == "live"
        assert response.header("x-stream-id") == stream_id
        assert response.header("x-stream-metadata") == "{}"
        assert reader.read_chunks_until(6) == b"hello\n"
        finish_producer(conn)
        assert reader.read_chunk() == b""


def test_readers_attached_at_different_moments_get_every_byte_once(
    server: ServerProcess, client: httpx.Client
) -> None:
    stream_id = unique_id("switch")
    batches = [numbered_lines(n * 400, 400) for n in range(6)]
    everything = b"".join(batches)
    conn, head = open_producer(server.port, f"/stream/{stream_id}")
    path = f"/stream/{stream_id}"
    with conn, ThreadPoolExecutor(8) as pool:
        assert head.status == 201
        readers = [pool.submit(read_all, server.url, path)]  # before any byte
        sent = 0
        for batch in batches:
            # Line by line, while the last reader is still replaying.
            for line in batch.splitlines(keepends=True):
                conn.send_chunk(line)
            sent += len(batch)
            readers.append(pool.submit(read_all, server.url, path))
            if len(readers) % 2:  # every other reader attaches once everything is stored
                wait_for_offset(client, stream_id, sent)
        assert finish_producer(conn) == summary(stream_id, everything)
        readers.append(pool.submit(read_all, server.url, path))  # after the end
        for number, future in enumerate(readers):
            response, body = future.result(timeout=30)
            assert response.status_code == 200
            assert len(body) == len(everything), number
            assert body == everything, number


def test_notail_on_live_stream_returns_current_bytes_and_ends(
    server: ServerProcess, client: httpx.Client
) -> None:
    stream_id = unique_id("notail")
    conn, head = open_producer(server.port, f"/stream/{stream_id}")
    with conn:
        assert head.status == 201
        conn.send_chunk(b"stored so far\n")
        wait_for_offset(client, stream_id, 14)
        response = client.get(f"/stream/{stream_id}", params={"notail": ""})
        assert response.status_code == 200
        assert response.headers["content-length"] == "14"
        assert response.headers["x-stream-state"] == "live"
        assert response.content == b"stored so far\n"
        finish_producer(conn)


def test_offset_beyond_live_size_waits_for_the_bytes(
    server: ServerProcess, client: httpx.Client
) -> None:
    stream_id = unique_id("offset-live")
    conn, head = open_producer(server.port, f"/stream/{stream_id}")
    with conn, RawConnection(server.port) as reader:
        assert head.status == 201
        conn.send_chunk(b"0123456789")
        wait_for_offset(client, stream_id, 10)
        reader.send(request_head("GET", f"/stream/{stream_id}?offset=15"))
        response = reader.read_head()
        assert response.status == 200
        assert response.header("x-stream-offset") == "15"
        reader.assert_silent(0.3)
        conn.send_chunk(b"abcdefghij")
        assert reader.read_chunks_until(5) == b"fghij"
        finish_producer(conn)
        assert reader.read_chunk() == b""


def test_offset_within_live_stream_replays_from_there_then_tails(
    server: ServerProcess, client: httpx.Client
) -> None:
    stream_id = unique_id("offset-tail")
    conn, head = open_producer(server.port, f"/stream/{stream_id}")
    with conn, RawConnection(server.port) as reader:
        assert head.status == 201
        conn.send_chunk(b"0123456789")
        wait_for_offset(client, stream_id, 10)
        reader.send(request_head("GET", f"/stream/{stream_id}?offset=4"))
        response = reader.read_head()
        assert response.header("x-stream-offset") == "4"
        assert reader.read_chunks_until(6) == b"456789"
        conn.send_chunk(b"tail")
        assert reader.read_chunks_until(4) == b"tail"
        finish_producer(conn)
        assert reader.read_chunk() == b""


def test_range_on_live_stream_is_ignored(server: ServerProcess, client: httpx.Client) -> None:
    stream_id = unique_id("range-live")
    conn, head = open_producer(server.port, f"/stream/{stream_id}")
    with conn, RawConnection(server.port) as reader:
        assert head.status == 201
        conn.send_chunk(b"0123456789")
        wait_for_offset(client, stream_id, 10)
        notail = client.get(
            f"/stream/{stream_id}", params={"notail": "true"}, headers={"Range": "bytes=2-4"}
        )
        assert notail.status_code == 200
        assert "content-range" not in notail.headers
        assert notail.content == b"0123456789"
        reader.send(request_head("GET", f"/stream/{stream_id}", {"Range": "bytes=2-4"}))
        response = reader.read_head()
        assert response.status == 200
        assert response.header("content-range") is None
        assert reader.read_chunks_until(10) == b"0123456789"
        finish_producer(conn)
        assert reader.read_chunk() == b""


def test_head_of_live_stream_has_get_headers_and_upload_offset(
    server: ServerProcess, client: httpx.Client
) -> None:
    stream_id = unique_id("head-live")
    make_dropped_stream(client, server.port, stream_id, b"twelve bytes")
    raw = raw_request(
        server.port, request_head("HEAD", f"/stream/{stream_id}", {"Connection": "close"})
    )
    head_text, _, body = raw.partition(b"\r\n\r\n")
    assert body == b""
    lines = head_text.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    head = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert head["upload-offset"] == "12"
    assert head["x-stream-state"] == "live"
    assert head["x-stream-id"] == stream_id.lower()
    assert head["content-type"] == "application/octet-stream"
    # A GET of a live stream has no Content-Length, so neither may its HEAD.
    assert "content-length" not in head, head.get("content-length")


def test_silent_live_reader_stays_connected_then_gets_data_and_ends(
    server: ServerProcess,
) -> None:
    stream_id = unique_id("silent")
    conn, head = open_producer(server.port, f"/stream/{stream_id}")
    with conn, RawConnection(server.port) as reader:
        assert head.status == 201
        conn.send_chunk(b"before the pause\n")
        reader.send(request_head("GET", f"/stream/{stream_id}"))
        assert reader.read_head().status == 200
        assert reader.read_chunks_until(17) == b"before the pause\n"
        reader.assert_silent(2.5)
        conn.send_chunk(b"after the pause\n")
        assert reader.read_chunks_until(16) == b"after the pause\n"
        finish_producer(conn)
        assert reader.read_chunk() == b""


def test_tail_timeout_ends_silent_live_reader(
    server_factory: Callable[..., ServerProcess],
) -> None:
    impatient = server_factory(tail_timeout=1)
    stream_id = unique_id("timeout")
    conn, head = open_producer(impatient.port, f"/stream/{stream_id}")
    with conn, RawConnection(impatient.port) as reader:
        assert head.status == 201
        conn.send_chunk(b"one line\n")
        reader.send(request_head("GET", f"/stream/{stream_id}"))
        assert reader.read_head().status == 200
        assert reader.read_chunks_until(9) == b"one line\n"
        started = time.monotonic()
        assert reader.read_chunk() == b""
        waited = time.monotonic() - started
        assert 0.8 <= waited < 5, waited
        # The producer is unaffected: the stream is still live and completes.
        conn.send_chunk(b"more\n")
        assert finish_producer(conn) == summary(stream_id, b"one line\nmore\n")


# -- segments and size --------------------------------------------------------------


def test_multi_segment_stream_reads_back_exactly_including_ranges(
    segmented: ServerProcess,
) -> None:
    stream_id = unique_id("segments")
    data = random.Random(7).randbytes(50_000)
    conn, head = open_producer(segmented.port, f"/stream/{stream_id}")
    with (
        conn,
        RawConnection(segmented.port) as tail,
        httpx.Client(base_url=segmented.url, timeout=10) as http,
    ):
        assert head.status == 201
        tail.send(request_head("GET", f"/stream/{stream_id}"))
        assert tail.read_head().status == 200
        position = 0
        for size in [1, 4095, 4096, 3000, 7000, 1]:  # ends and starts on boundaries
            conn.send_chunk(data[position : position + size])
            position += size
        while position < len(data):
            conn.send_chunk(data[position : position + 1733])
            position += 1733
        assert finish_producer(conn) == summary(stream_id, data)
        assert tail.read_chunks_until(len(data)) == data
        assert tail.read_chunk() == b""

        assert http.get(f"/stream/{stream_id}").content == data
        for start, end in [(4090, 4105), (4095, 4096), (8191, 8192), (0, 12288), (40000, 49999)]:
            response = http.get(f"/stream/{stream_id}", headers={"Range": f"bytes={start}-{end}"})
            assert response.status_code == 206
            assert response.content == data[start : end + 1], (start, end)
        suffix = http.get(f"/stream/{stream_id}", headers={"Range": "bytes=-5000"})
        assert suffix.content == data[-5000:]
        for offset in (4096, 4097, 12287):
            response = http.get(f"/stream/{stream_id}", params={"offset": offset})
            assert response.content == data[offset:], offset


def test_large_stream_round_trips_with_equal_sha256(server: ServerProcess) -> None:
    stream_id = unique_id("large")
    block = random.Random(20).randbytes(1 << 20)
    expected = hashlib.sha256()
    pieces = []
    for n in range(20):
        piece = block[n:] + block[:n]  # 20 different MiB
        pieces.append(piece)
        expected.update(piece)

    def body() -> Iterator[bytes]:
        for piece in pieces:
            for start in range(0, len(piece), 65536):
                yield piece[start : start + 65536]

    with httpx.Client(base_url=server.url, timeout=30) as http:
        response = http.post(f"/stream/{stream_id}", content=body())
        assert response.status_code == 201
        assert response.json() == {
            "id": stream_id,
            "size": 20 << 20,
            "sha256": expected.hexdigest(),
            "state": "complete",
        }
        received = hashlib.sha256()
        size = 0
        with http.stream("GET", f"/stream/{stream_id}") as read:
            assert read.headers["content-length"] == str(20 << 20)
            assert read.headers["etag"] == f'"{expected.hexdigest()}"'
            for data in read.iter_raw():
                received.update(data)
                size += len(data)
    assert size == 20 << 20
    assert received.hexdigest() == expected.hexdigest()


def test_notail_on_finished_stream_is_whole_content(
    client: httpx.Client, finished: tuple[str, bytes, dict[str, object]]
) -> None:
    stream_id, data, _ = finished
    assert get_bytes(client, stream_id) == data


@pytest.mark.parametrize(
    ("if_none_match", "status"),
    [("{etag}", 304), ("*", 304), ('"other", W/{etag}', 304), ('"other"', 200), ("", 200)],
)
def test_if_none_match_on_finished_stream_is_304_when_a_tag_matches(
    client: httpx.Client,
    finished: tuple[str, bytes, dict[str, object]],
    if_none_match: str,
    status: int,
) -> None:
    stream_id, data, _ = finished
    etag = '"' + hashlib.sha256(data).hexdigest() + '"'
    response = client.get(
        f"/stream/{stream_id}", headers={"If-None-Match": if_none_match.format(etag=etag)}
    )
    assert response.status_code == status
    assert response.headers["etag"] == etag
    assert response.content == (b"" if status == 304 else data)
