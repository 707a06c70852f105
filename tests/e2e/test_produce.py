"""Producing a stream: POST /stream[/{id}] (SPEC §1, §2)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.helpers import (
    RawConnection,
    assert_json_error,
    finish_producer,
    get_bytes,
    module_server,
    open_producer,
    request_head,
    summary,
    unique_id,
    wait_for_offset,
    wait_until_resumable,
)
from tests.server import ServerProcess, raw_request

STREAM_EXISTS = "The stream with ID {} already exists. Specify force=true query param to override."
LIMIT = 100
METADATA_LIMIT = 64


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory.mktemp("produce"))


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(
        tmp_path_factory.mktemp("limited"),
        limits={"stream_bytes": LIMIT, "metadata_bytes": METADATA_LIMIT},
    )


@pytest.fixture
def limited_client(limited: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=limited.url, timeout=10) as http:
        yield http


def assert_created(response: httpx.Response, stream_id: str) -> None:
    assert response.status_code == 201, response.text
    assert response.headers["x-stream-id"] == stream_id
    assert response.headers["location"] == f"/stream/{stream_id}"


# -- creating -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/stream", "/stream/"])
def test_post_without_id_creates_stream_under_generated_id(client: httpx.Client, path: str) -> None:
    data = b"generated id\n"
    response = client.post(path, content=data)
    stream_id = response.headers["x-stream-id"]
    assert_created(response, stream_id)
    assert re.fullmatch(r"[A-Za-z0-9._~:@-]{1,200}", stream_id)
    assert quote(stream_id, safe="") == stream_id  # URL-safe
    assert response.json() == summary(stream_id, data)
    read = client.get(response.headers["location"])
    assert read.status_code == 200
    assert read.content == data


def test_post_with_content_length_body_completes_with_summary(client: httpx.Client) -> None:
    stream_id = unique_id("cl")
    data = bytes(range(256)) * 40
    response = client.post(f"/stream/{stream_id}", content=data)
    assert_created(response, stream_id)
    assert response.json() == summary(stream_id, data)
    assert client.get(f"/stream/{stream_id}").content == data


def test_post_with_chunked_body_completes_with_summary(client: httpx.Client) -> None:
    stream_id = unique_id("chunked")
    parts = [b"first\n", b"\x00\xff binary \r\n", b"x" * 70_000, b"last"]
    response = client.post(f"/stream/{stream_id}", content=iter(parts))
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_created(response, stream_id)
    assert response.json() == summary(stream_id, b"".join(parts))
    assert client.get(f"/stream/{stream_id}").content == b"".join(parts)


def test_post_with_empty_body_creates_empty_complete_stream(client: httpx.Client) -> None:
    stream_id = unique_id("empty")
    response = client.post(f"/stream/{stream_id}", content=b"")
    assert_created(response, stream_id)
    assert response.json() == summary(stream_id, b"")
    read = client.get(f"/stream/{stream_id}")
    assert read.content == b""
    assert read.headers["x-stream-state"] == "complete"


def test_created_status_and_headers_arrive_before_any_body_byte(
    server: ServerProcess, client: httpx.Client
) -> None:
    stream_id = unique_id("early")
    conn, head = open_producer(server.port, f"/stream/{stream_id}")
    with conn:
        assert head.status == 201
        assert head.reason == "Created"
        assert head.header("x-stream-id") == stream_id
        assert head.header("location") == f"/stream/{stream_id}"
        # The stream exists and is live while its body has not started.
        assert client.head(f"/stream/{stream_id}").headers["x-stream-state"] == "live"
        conn.send_chunk(b"body after the 201\n")
        assert finish_producer(conn) == summary(stream_id, b"body after the 201\n")


def test_reader_sees_chunk_before_producer_body_ends(server: ServerProcess) -> None:
    stream_id = unique_id("visible")
    conn, head = open_producer(server.port, f"/stream/{stream_id}")
    with conn, RawConnection(server.port) as reader:
        assert head.status == 201
        conn.send_chunk(b"first line\n")
        reader.send(request_head("GET", f"/stream/{stream_id}"))
        reader_head = reader.read_head()
        assert reader_head.status == 200
        assert reader_head.header("x-stream-state") == "live"
        assert reader.read_chunks_until(11) == b"first line\n"
        conn.send_chunk(b"second line\n")
        assert reader.read_chunks_until(12) == b"second line\n"
        assert finish_producer(conn) == summary(stream_id, b"first line\nsecond line\n")
        assert reader.read_chunk() == b""  # the tail ends with the stream


def test_expect_100_continue_gets_interim_response_before_201(
    server: ServerProcess, client: httpx.Client
) -> None:
    stream_id = unique_id("expect")
    data = b"sent only after 100 Continue\n"
    with RawConnection(server.port) as conn:
        conn.send(
            request_head(
                "POST",
                f"/stream/{stream_id}",
                {"Content-Length": str(len(data)), "Expect": "100-continue"},
            )
        )
        interim = conn.read_head()
        assert (interim.status, interim.reason) == (100, "Continue")
        created = conn.read_head()
        assert created.status == 201
        assert created.header("x-stream-id") == stream_id
        conn.send(data)
        assert json.loads(conn.read_body(created)) == summary(stream_id, data)
    assert get_bytes(client, stream_id) == data


# -- curl -------------------------------------------------------------------------

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def curl(*args: str, stdin: bytes | None = None) -> tuple[int, bytes]:
    """Run curl; return the HTTP status and the response body."""
    result = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", *args],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=True,
    )
    body, _, status = result.stdout.rpartition(b"\n")
    return int(status), body


@needs_curl
def test_curl_upload_file_with_post_stores_it(
    server: ServerProcess, client: httpx.Client, tmp_path: Path
) -> None:
    stream_id = unique_id("curl-t")
    data = bytes(range(256)) * 8192  # 2 MiB: curl sends Expect: 100-continue
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    status, body = curl("-X", "POST", "-T", str(path), f"{server.url}/stream/{stream_id}")
    assert status == 201
    assert json.loads(body) == summary(stream_id, data)
    assert client.get(f"/stream/{stream_id}").content == data


@needs_curl
def test_curl_data_binary_with_metadata_stores_both(
    server: ServerProcess, client: httpx.Client, tmp_path: Path
) -> None:
    stream_id = unique_id("curl-d")
    data = b"line one\nline two\n\x00\x01\xfe"
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    status, body = curl(
        "--data-binary",
        f"@{path}",
        "-H",
        'x-stream-metadata: {"job": "curl", "attempt": 2}',
        f"{server.url}/stream/{stream_id}",
    )
    assert status == 201
    assert json.loads(body) == summary(stream_id, data)
    read = client.get(f"/stream/{stream_id}")
    assert read.content == data
    assert json.loads(read.headers["x-stream-metadata"]) == {"job": "curl", "attempt": 2}


@needs_curl
def test_curl_chunked_upload_from_stdin_stores_it(
    server: ServerProcess, client: httpx.Client
) -> None:
    stream_id = unique_id("curl-stdin")
    data = b"piped from stdin\n" * 1000
    status, body = curl("-X", "POST", "-T", "-", f"{server.url}/stream/{stream_id}", stdin=data)
    assert status == 201
    assert json.loads(body) == summary(stream_id, data)
    assert client.get(f"/stream/{stream_id}").content == data


# -- taken ids and force ----------------------------------------------------------


def test_post_taken_id_without_force_is_409(client: httpx.Client) -> None:
    stream_id = unique_id("taken")
    assert client.post(f"/stream/{stream_id}", content=b"original").status_code == 201
    response = client.post(f"/stream/{stream_id}", content=b"intruder")
    message = assert_json_error(response, 409)
    assert message == STREAM_EXISTS.format(stream_id)
    assert client.get(f"/stream/{stream_id}").content == b"original"


def test_post_taken_live_id_without_force_is_409_and_keeps_producer(
    server: ServerProcess, client: httpx.Client
) -> None:
    stream_id = unique_id("taken-live")
    conn, head = open_producer(server.port, f"/stream/{stream_id}")
    with conn:
        assert head.status == 201
        conn.send_chunk(b"still writing\n")
        wait_for_offset(client, stream_id, 14)
        response = client.post(f"/stream/{stream_id}", content=b"intruder")
        assert assert_json_error(response, 409) == STREAM_EXISTS.format(stream_id)
        conn.send_chunk(b"done\n")
        assert finish_producer(conn) == summary(stream_id, b"still writing\ndone\n")


def test_post_force_replaces_complete_stream_and_says_so(client: httpx.Client) -> None:
    stream_id = unique_id("force")
    first = client.post(
        f"/stream/{stream_id}", content=b"old content", headers={"X-Stream-Metadata": '{"v": 1}'}
    )
    assert "x-stream-replaced" not in first.headers
    response = client.post(
        f"/stream/{stream_id}",
        params={"force": "true"},
        content=b"new",
        headers={"X-Stream-Metadata": '{"v": 2}'},
    )
    assert_created(response, stream_id)
    assert response.headers["x-stream-replaced"] == "true"
    assert response.json() == summary(stream_id, b"new")
    read = client.get(f"/stream/{stream_id}")
    assert read.content == b"new"
    assert json.loads(read.headers["x-stream-metadata"]) == {"v": 2}


def test_post_force_on_free_id_creates_without_replaced_header(client: httpx.Client) -> None:
    stream_id = unique_id("force-free")
    response = client.post(f"/stream/{stream_id}", params={"force": "true"}, content=b"fresh")
    assert_created(response, stream_id)
    assert "x-stream-replaced" not in response.headers
    assert response.json() == summary(stream_id, b"fresh")


def test_post_force_ends_old_readers_and_serves_new_content(
    server: ServerProcess, client: httpx.Client
) -> None:
    stream_id = unique_id("force-live")
    conn, head = open_producer(server.port, f"/stream/{stream_id}")
    with conn, RawConnection(server.port) as reader:
        assert head.status == 201
        conn.send_chunk(b"old stream\n")
        reader.send(request_head("GET", f"/stream/{stream_id}"))
        assert reader.read_head().status == 200
        assert reader.read_chunks_until(11) == b"old stream\n"

        response = client.post(f"/stream/{stream_id}?force=true", content=b"new stream\n")
        assert_created(response, stream_id)
        assert response.headers["x-stream-replaced"] == "true"
        assert response.json() == summary(stream_id, b"new stream\n")

        assert reader.read_chunk() == b""  # the old reader's response ended
        try:  # the old producer's later bytes must not reach the new stream
            conn.send_chunk(b"late bytes of the old producer\n")
            conn.end_chunks()
        except OSError:
            pass
    assert client.get(f"/stream/{stream_id}").content == b"new stream\n"


# -- metadata ---------------------------------------------------------------------


def test_metadata_is_stored_and_echoed_on_get_and_head(client: httpx.Client) -> None:
    stream_id = unique_id("meta")
    metadata = {"build": 7, "branch": "main", "who": "zoë", "nested": {"ok": True}}
    raw = json.dumps(metadata, ensure_ascii=False).encode()
    response = client.post(f"/stream/{stream_id}", content=b"x", headers={"X-Stream-Metadata": raw})
    assert_created(response, stream_id)
    for read in (client.get(f"/stream/{stream_id}"), client.head(f"/stream/{stream_id}")):
        assert json.loads(read.headers["x-stream-metadata"]) == metadata


def test_absent_metadata_is_an_empty_object(client: httpx.Client) -> None:
    stream_id = unique_id("nometa")
    assert client.post(f"/stream/{stream_id}", content=b"x").status_code == 201
    assert json.loads(client.get(f"/stream/{stream_id}").headers["x-stream-metadata"]) == {}


def test_metadata_of_16_kib_is_accepted(client: httpx.Client) -> None:
    stream_id = unique_id("bigmeta")
    raw = b'{"k":"' + b"x" * (16384 - 8) + b'"}'
    assert len(raw) == 16384
    response = client.post(f"/stream/{stream_id}", content=b"x", headers={"X-Stream-Metadata": raw})
    assert_created(response, stream_id)
    stored = json.loads(client.get(f"/stream/{stream_id}").headers["x-stream-metadata"])
    assert stored == json.loads(raw)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"{not json", id="invalid-json"),
        pytest.param(b'{"a": 1', id="truncated-json"),
        pytest.param(b"[1, 2]", id="array"),
        pytest.param(b'"a string"', id="string"),
        pytest.param(b"42", id="number"),
        pytest.param(b'{"a": "\xff\xfe"}', id="not-utf8"),
        pytest.param(b'{"a": NaN}', id="nan-is-not-json"),
        pytest.param(b'{"a": -Infinity}', id="infinity-is-not-json"),
        pytest.param(b'{"k":"' + b"x" * (16384 - 7) + b'"}', id="over-16-kib"),
    ],
)
def test_bad_metadata_is_400_and_creates_nothing(
    server: ServerProcess, client: httpx.Client, raw: bytes
) -> None:
    stream_id = unique_id("badmeta")
    head = request_head(
        "POST",
        f"/stream/{stream_id}",
        {"X-Stream-Metadata": raw, "Content-Length": "1", "Connection": "close"},
    )
    response = raw_request(server.port, head, b"x")
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 400 "), response[:200]
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in headers.lower()
    assert list(json.loads(body)) == ["error"]
    assert client.get(f"/stream/{stream_id}").status_code == 404


def test_metadata_over_configured_limit_is_400(limited_client: httpx.Client) -> None:
    fits = json.dumps({"k": "x" * 40})
    assert len(fits) <= METADATA_LIMIT
    fits_id, big_id = unique_id("fits"), unique_id("big")
    response = limited_client.post(
        f"/stream/{fits_id}", content=b"x", headers={"X-Stream-Metadata": fits}
    )
    assert response.status_code == 201
    too_big = json.dumps({"k": "x" * METADATA_LIMIT})
    response = limited_client.post(
        f"/stream/{big_id}", content=b"x", headers={"X-Stream-Metadata": too_big}
    )
    assert_json_error(response, 400)
    assert limited_client.get(f"/stream/{big_id}").status_code == 404


# -- ids --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("a" * 201, id="201-chars"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param("has%20space", id="space"),
        pytest.param("dollar$sign", id="dollar"),
        pytest.param("quote'd", id="quote"),
        pytest.param("plus+sign", id="plus"),
        pytest.param("caf%C3%A9", id="non-ascii"),
    ],
)
def test_post_with_bad_id_is_400_and_creates_nothing(client: httpx.Client, bad: str) -> None:
    assert_json_error(client.post(f"/stream/{bad}", content=b"x"), 400)
    assert_json_error(client.get(f"/stream/{bad}"), 400)


@pytest.mark.parametrize(
    "good",
    [
        pytest.param("a" * 200, id="200-chars"),
        pytest.param("A-z_0.9~:@x", id="every-punctuation"),
        pytest.param("x", id="1-char"),
        pytest.param("-dash-first", id="dash-first"),
    ],
)
def test_post_with_valid_id_is_201(client: httpx.Client, good: str) -> None:
    stream_id = good + "-" + unique_id("") if len(good) < 150 else good
    response = client.post(f"/stream/{stream_id}", content=b"ok", params={"force": "true"})
    assert_created(response, stream_id)
    assert client.get(f"/stream/{stream_id}").content == b"ok"


def test_generated_ids_are_unique_and_sort_by_creation_time(client: httpx.Client) -> None:
    def create(_: int) -> str:
        response = client.post("/stream", content=b"x")
        assert response.status_code == 201
        return response.headers["x-stream-id"]

    with ThreadPoolExecutor(8) as pool:
        first_batch = list(pool.map(create, range(24)))
        second_batch = list(pool.map(create, range(24)))
    assert len(set(first_batch + second_batch)) == 48
    assert max(first_batch) < min(second_batch)
    sequential = [create(n) for n in range(5)]
    assert sequential == sorted(sequential)
    assert len(set(sequential)) == 5
    assert max(second_batch) < sequential[0]


# -- size limit -------------------------------------------------------------------


def test_content_length_over_stream_limit_is_413_and_stores_nothing(
    limited_client: httpx.Client,
) -> None:
    stream_id = unique_id("over")
    response = limited_client.post(f"/stream/{stream_id}", content=b"x" * (LIMIT + 1))
    assert_json_error(response, 413)
    assert limited_client.get(f"/stream/{stream_id}").status_code == 404
    assert limited_client.head(f"/stream/{stream_id}").status_code == 404


def test_content_length_at_stream_limit_is_accepted(limited_client: httpx.Client) -> None:
    stream_id = unique_id("at-limit")
    data = b"y" * LIMIT
    response = limited_client.post(f"/stream/{stream_id}", content=data)
    assert response.status_code == 201
    assert response.json() == summary(stream_id, data)


def test_chunked_producer_crossing_limit_ends_at_limit_complete(
    limited: ServerProcess, limited_client: httpx.Client
) -> None:
    stream_id = unique_id("crossing")
    data = bytes(range(60)) + bytes(range(100, 160))
    conn, head = open_producer(limited.port, f"/stream/{stream_id}")
    with conn:
        assert head.status == 201
        conn.send_chunk(data[:60])
        conn.send_chunk(data[60:])
        body = b""
        while chunk := conn.read_chunk():
            body += chunk
    result = json.loads(body)
    assert list(result) == ["error"] and isinstance(result["error"], str)
    read = limited_client.get(f"/stream/{stream_id}")
    assert read.status_code == 200
    assert read.content == data[:LIMIT]
    assert read.headers["x-stream-state"] == "complete"
    assert read.headers["etag"] == f'"{summary(stream_id, data[:LIMIT])["sha256"]}"'


# -- dropped producer -------------------------------------------------------------


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_producer_dropping_connection_leaves_live_stream_with_bytes_sent(
    server: ServerProcess, client: httpx.Client, framing: str
) -> None:
    stream_id = unique_id("dropped")
    parts = [b"part one\n", b"part two\n", b"\x00" * 5000]
    sent = b"".join(parts)
    with RawConnection(server.port) as conn:
        if framing == "chunked":
            conn.send(request_head("POST", f"/stream/{stream_id}", chunked=True))
            assert conn.read_head().status == 201
            for part in parts:
                conn.send_chunk(part)
        else:
            promised = {"Content-Length": str(len(sent) + 1000)}
            conn.send(request_head("POST", f"/stream/{stream_id}", promised))
            assert conn.read_head().status == 201
            for part in parts:
                conn.send(part)
        wait_for_offset(client, stream_id, len(sent))
    # Once the server has let the producer go, the stream still holds exactly that.
    wait_until_resumable(client, stream_id, len(sent))
    head = client.head(f"/stream/{stream_id}")
    assert head.headers["x-stream-state"] == "live"
    assert head.headers["upload-offset"] == str(len(sent))
    assert get_bytes(client, stream_id) == sent
