"""Edge rules of issue 9, item 11: transfer codings other than chunked are 501
with nothing stored (SPEC §7), HEAD of the health endpoints (SPEC §5), and
secrets in query strings never reach the access log (SPEC §6)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.helpers import (
    module_server,
    open_producer,
    unique_id,
    wait_for,
    wait_for_offset,
    wait_until_resumable,
)
from tests.server import ServerProcess, raw_request

SECRET = "edge-secret-5b1d9e3f7a2c4e6b"
AUTH = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory.mktemp("edges"), tokens=[SECRET])


@pytest.fixture
def http(edge: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=edge.url, headers=AUTH, timeout=10) as client:
        yield client


CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    ("method", "coding", "body"),
    [
        ("POST", b"Transfer-Encoding: gzip, chunked", CHUNKED_HELLO),
        ("POST", b"Transfer-Encoding: GZIP , Chunked", CHUNKED_HELLO),
        ("POST", b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked", CHUNKED_HELLO),
        ("POST", b"Transfer-Encoding: gzip", b"hello"),
        ("POST", b"Transfer-Encoding: deflate", b"hello"),
        ("POST", b"Transfer-Encoding: identity\r\nContent-Length: 5", b"hello"),
        ("PATCH", b"Transfer-Encoding: gzip, chunked\r\nUpload-Offset: 4", CHUNKED_HELLO),
    ],
    ids=["gzip-chunked", "case-and-blanks", "two-headers", "gzip", "deflate", "identity", "patch"],
)
def test_a_transfer_coding_other_than_chunked_is_501_and_stores_nothing(
    edge: ServerProcess, http: httpx.Client, method: str, coding: bytes, body: bytes
) -> None:
    stream_id = unique_id("coded")
    if method == "PATCH":
        producer, created = open_producer(edge.port, f"/stream/{stream_id}", AUTH)
        with producer:  # dropped after 4 bytes: live and resumable at 4
            assert created.status == 201
            producer.send_chunk(b"kept")
            wait_for_offset(http, stream_id, 4)
        wait_until_resumable(http, stream_id, 4)
    head = (
        f"{method} /stream/{stream_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {SECRET}\r\n".encode()
        + coding
        + b"\r\n\r\n"
    )
    answer = raw_request(edge.port, head, body)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 501 Not Implemented", answer[:300]
    headers, _, payload = rest.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in headers.lower()
    assert b"connection: close" in headers.lower()
    assert "chunked" in json.loads(payload)["error"]
    if method == "PATCH":
        info = http.get(f"/streams/{stream_id}").json()
        assert (info["state"], info["size"]) == ("live", 4)
    else:
        assert http.get(f"/streams/{stream_id}").status_code == 404


def test_plain_chunked_in_any_case_is_still_accepted(
    edge: ServerProcess, http: httpx.Client
) -> None:
    stream_id = unique_id("plain")
    head = (
        f"POST /stream/{stream_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Authorization: Bearer {SECRET}\r\nTransfer-Encoding: Chunked\r\n\r\n".encode()
    )
    assert raw_request(edge.port, head, CHUNKED_HELLO).startswith(b"HTTP/1.1 201 ")
    assert http.get(f"/stream/{stream_id}").content == b"hello"


@pytest.mark.parametrize(("path", "status"), [("/healthz", "ok"), ("/readyz", "ready")])
def test_health_endpoints_answer_head_like_get_without_a_token(
    edge: ServerProcess, path: str, status: str
) -> None:
    got = httpx.get(edge.url + path)
    assert got.status_code == 200 and got.json() == {"status": status}
    head = httpx.head(edge.url + path)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == got.headers["content-length"]


@pytest.mark.parametrize("name", ["access_token", "token", "signature", "Access_Token"])
def test_secrets_in_the_query_string_are_redacted_in_the_access_log(
    edge: ServerProcess, http: httpx.Client, name: str
) -> None:
    marker = unique_id("logged")
    secret = unique_id("query-secret")
    http.get("/streams", params={name: secret, "prefix": marker})
    line = wait_for(
        lambda: next((line for line in edge.log if marker in line), None), "the access log line"
    )
    assert f"{name}=REDACTED" in line, line
    assert f"prefix={marker}" in line
    assert not any(secret in line for line in edge.log)
