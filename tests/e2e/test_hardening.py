"""Hostile and unlucky requests (issue 9): deep metadata, unbounded numbers, share
bodies read before the token, scope escalation through force and tus, share links
that outlive their stream, encoded slashes in ids (SPEC §1, §6, §7)."""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import module_server
from tests.e2e.test_errors import Answer, raw, request_head
from tests.e2e.test_spy import unique
from tests.server import ServerProcess

FULL = "hard-full-1f6c0b9e3a7d5e2c"
READ = "hard-read-8a2e6d0c4f1b9e7a"
WRITE = "hard-write-3d7b1f5a9c0e4b8d"
ADMIN = "hard-admin-6e0a4c8f2b7d1e5a"
TOKENS = [
    FULL,
    {"token": READ, "scopes": ["read"]},
    {"token": WRITE, "scopes": ["write"]},
    {"token": ADMIN, "scopes": ["admin"]},
]
HUGE = "9" * 5000  # int() refuses more than 4,300 digits
TOO_BIG = str(2**63)  # one past the largest value the API accepts
TUS = {"Tus-Resumable": "1.0.0"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def nested(depth: int) -> str:
    """An object whose value nests ``depth`` levels in all (the object is level 1)."""
    return '{"a":' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def assert_error(response: httpx.Response | Answer, status: int) -> str:
    code = response.status_code if isinstance(response, httpx.Response) else response.status
    body = response.content if isinstance(response, httpx.Response) else response.body
    assert code == status, body[:300]
    message = json.loads(body)["error"]
    assert isinstance(message, str) and message and "Traceback" not in message
    return message


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory.mktemp("hard-open"))


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(
        tmp_path_factory.mktemp("hard-secured"), tokens=TOKENS, signing_key="hard-signing-key"
    )


@pytest.fixture
def http(open_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=open_server.url, timeout=10) as client:
        yield client


@pytest.fixture
def sec(secured: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=secured.url, timeout=10) as client:
        yield client


# -- metadata nesting (item 1) ------------------------------------------------------


def test_metadata_nested_32_levels_is_accepted_and_33_is_400(http: httpx.Client) -> None:
    ok = unique("deep32")
    created = http.post(f"/stream/{ok}", content=b"x", headers={"X-Stream-Metadata": nested(32)})
    assert created.status_code == 201
    assert http.get(f"/streams/{ok}").json()["metadata"] == json.loads(nested(32))
    refused = unique("deep33")
    got = http.post(f"/stream/{refused}", content=b"x", headers={"X-Stream-Metadata": nested(33)})
    assert "32 levels" in assert_error(got, 400)
    assert http.get(f"/streams/{refused}").status_code == 404


@pytest.mark.parametrize("depth", [253, 950, 5000])
def test_deeply_nested_metadata_is_400_not_500(http: httpx.Client, depth: int) -> None:
    stream_id = unique("deep")
    got = http.post(
        f"/stream/{stream_id}", content=b"x", headers={"X-Stream-Metadata": nested(depth)}
    )
    assert_error(got, 400)
    assert http.get(f"/streams/{stream_id}").status_code == 404
    assert http.get("/streams").status_code == 200


@pytest.mark.sqlite_only
def test_metadata_stored_by_an_older_version_however_deep_still_lists(
    server_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = server_factory()
    stream_id = unique("legacy")
    assert httpx.post(f"{server.url}/stream/{stream_id}", content=b"old").status_code == 201
    server.stop()
    deep = json.loads(nested(300))  # pydantic's serializer gave up past 253
    with sqlite3.connect(Path(server.config["data_dir"]) / "weft.db") as db:
        db.execute("UPDATE streams SET metadata = ? WHERE id = ?", (json.dumps(deep), stream_id))
    server.start()
    listed = httpx.get(f"{server.url}/streams")
    assert listed.status_code == 200, listed.text
    assert [s["metadata"] for s in listed.json()["streams"]] == [deep]
    assert httpx.get(f"{server.url}/streams/{stream_id}").json()["metadata"] == deep
    filtered = httpx.get(f"{server.url}/streams", params={"meta.a": "x"})
    assert filtered.status_code == 200 and filtered.json()["streams"] == []


@pytest.mark.parametrize("metadata", ['{"a": 1e400}', '{"a": "\\ud800"}', '{"\\udfff": 1}'])
def test_metadata_no_response_could_carry_is_400_and_lists_keep_working(
    http: httpx.Client, metadata: str
) -> None:
    stream_id = unique("unsayable")
    got = http.post(f"/stream/{stream_id}", content=b"x", headers={"X-Stream-Metadata": metadata})
    assert_error(got, 400)
    assert http.get(f"/streams/{stream_id}").status_code == 404
    assert http.get("/streams").status_code == 200


def test_empty_metadata_header_is_400(open_server: ServerProcess, http: httpx.Client) -> None:
    stream_id = unique("empty-meta")
    got = raw(
        open_server.port,
        request_head("POST", f"/stream/{stream_id}", b"X-Stream-Metadata:", b"Content-Length: 0"),
    )
    assert "not valid JSON" in assert_error(got, 400)
    assert http.get(f"/streams/{stream_id}").status_code == 404


# -- numbers (item 7) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_id(open_server: ServerProcess) -> str:
    stream_id = unique("numbers")
    assert httpx.post(f"{open_server.url}/stream/{stream_id}", content=b"0123456789").is_success
    return stream_id


@pytest.fixture
def live_id(http: httpx.Client) -> str:
    """A live stream with 3 bytes and no producer (a tus upload of 10 bytes)."""
    created = http.post(
        "/files/",
        headers={**TUS, "Upload-Length": "10", "Content-Type": "application/offset+octet-stream"},
        content=b"abc",
    )
    assert created.status_code == 201
    return created.headers["location"].rsplit("/", 1)[1]


@pytest.mark.parametrize("number", [HUGE, TOO_BIG, "-1", "1e3", "0x10", "+5", "5 5"])
def test_every_number_out_of_bounds_is_400(
    http: httpx.Client, finished_id: str, live_id: str, number: str
) -> None:
    octets = {**TUS, "Content-Type": "application/offset+octet-stream"}
    answers = {
        "?offset": http.get(f"/stream/{finished_id}", params={"offset": number}),
        "?limit": http.get("/streams", params={"limit": number}),
        "Upload-Offset": http.patch(f"/stream/{live_id}", headers={"Upload-Offset": number}),
        "tus Upload-Offset": http.patch(
            f"/files/{live_id}", headers={**octets, "Upload-Offset": number}
        ),
        "tus Upload-Length": http.post("/files/", headers={**TUS, "Upload-Length": number}),
        "Last-Event-ID": http.get("/events", headers={"Last-Event-ID": number}),
        "share expires": http.get(
            f"/stream/{finished_id}", params={"expires": number, "signature": "00"}
        ),
    }
    for name, got in answers.items():
        assert got.status_code == 400, (name, got.status_code, got.text[:200])
        assert got.json()["error"], name
    # Nothing was stored or changed by any of them.
    assert http.get(f"/stream/{finished_id}").content == b"0123456789"
    assert http.head(f"/stream/{live_id}").headers["upload-offset"] == "3"


def test_largest_number_is_accepted_where_it_means_something(
    http: httpx.Client, finished_id: str, live_id: str
) -> None:
    largest = str(2**63 - 1)
    got = http.get(f"/stream/{finished_id}", params={"offset": largest})
    assert_error(got, 416)
    mismatch = http.patch(f"/stream/{live_id}", headers={"Upload-Offset": largest})
    assert_error(mismatch, 409)
    assert mismatch.headers["upload-offset"] == "3"


@pytest.mark.parametrize("header", [f"bytes={HUGE}-", f"bytes=0-{HUGE}", f"bytes=-{HUGE}"])
def test_range_with_huge_numbers_is_ignored(
    http: httpx.Client, finished_id: str, header: str
) -> None:
    got = http.get(f"/stream/{finished_id}", headers={"Range": header})
    assert got.status_code == 200
    assert got.content == b"0123456789"


def test_range_with_leading_zeros_still_counts(http: httpx.Client, finished_id: str) -> None:
    got = http.get(f"/stream/{finished_id}", headers={"Range": "bytes=" + "0" * 30 + "2-0003"})
    assert got.status_code == 206
    assert got.content == b"23"


def test_cursor_with_out_of_range_time_or_garbage_is_400(http: httpx.Client) -> None:
    import base64

    def cursor(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    for bad in (
        cursor([10**30, "x"]),
        cursor([-1, "x"]),
        cursor([1.5, "x"]),
        cursor([True, "x"]),
        cursor(json.loads("[" * 900 + "]" * 900)),
        "A" * 5000,
    ):
        assert_error(http.get("/streams", params={"cursor": bad}), 400)


# -- share links: body after token, size, type, incarnation (items 4, 6, 11) --------------


def test_share_without_token_is_401_before_its_body_is_read(secured: ServerProcess) -> None:
    stream_id = unique("shared")
    created = httpx.post(f"{secured.url}/stream/{stream_id}", content=b"x", headers=bearer(FULL))
    assert created.status_code == 201
    head = (
        f"POST /streams/{stream_id}/share HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {200 * 1024 * 1024}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", secured.port), timeout=10) as sock:
        sock.sendall(head + b"{" + b" " * 65536)
        # The answer comes while 200 MB of body are still unsent.
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert b"www-authenticate: Bearer" in answer


def test_share_body_over_64_kib_is_413_and_ttl_must_be_a_number(sec: httpx.Client) -> None:
    stream_id = unique("shared")
    assert sec.post(f"/stream/{stream_id}", content=b"x", headers=bearer(FULL)).is_success
    url = f"/streams/{stream_id}/share"
    padded = json.dumps({"ttl": 60, "pad": "x" * 70_000}).encode()
    assert_error(sec.post(url, content=padded, headers=bearer(READ)), 413)

    def chunks() -> Iterator[bytes]:
        yield padded

    assert_error(sec.post(url, content=chunks(), headers=bearer(READ)), 413)
    for body in ('{"ttl": true}', '{"ttl": "60"}', '{"ttl": 0}', '{"ttl": null}', "[60]", "{", ""):
        assert_error(sec.post(url, content=body, headers=bearer(READ)), 400)
    assert sec.post(url, json={"ttl": 60}, headers=bearer(READ)).status_code == 200
    assert sec.post(url, json={"ttl": 1.5}, headers=bearer(READ)).status_code == 200


def test_share_link_dies_with_its_stream_when_deleted_or_replaced(sec: httpx.Client) -> None:
    stream_id = unique("incarnation")
    assert sec.post(f"/stream/{stream_id}", content=b"first", headers=bearer(FULL)).is_success
    first = sec.post(f"/streams/{stream_id}/share", json={"ttl": 600}, headers=bearer(READ))
    link = first.json()["url"]
    assert httpx.get(sec.base_url.join(link)).content == b"first"

    assert sec.delete(f"/stream/{stream_id}", headers=bearer(ADMIN)).status_code == 204
    assert_error(httpx.get(sec.base_url.join(link)), 403)
    assert sec.post(f"/stream/{stream_id}", content=b"second", headers=bearer(FULL)).is_success
    assert_error(httpx.get(sec.base_url.join(link)), 403)
    assert httpx.head(sec.base_url.join(link)).status_code == 403
    info_link = link.replace("/stream/", "/streams/", 1)
    assert_error(httpx.get(sec.base_url.join(info_link)), 403)

    second = sec.post(f"/streams/{stream_id}/share", json={"ttl": 600}, headers=bearer(READ))
    link = second.json()["url"]
    assert httpx.get(sec.base_url.join(link)).content == b"second"
    replaced = sec.post(f"/stream/{stream_id}?force=true", content=b"third", headers=bearer(FULL))
    assert replaced.headers["x-stream-replaced"] == "true"
    assert_error(httpx.get(sec.base_url.join(link)), 403)


# -- scopes: force and tus termination (item 5) -----------------------------------------


def test_write_token_cannot_replace_an_existing_stream(sec: httpx.Client) -> None:
    stream_id = unique("keep")
    assert sec.post(f"/stream/{stream_id}", content=b"precious", headers=bearer(FULL)).is_success
    refused = sec.post(f"/stream/{stream_id}?force=true", content=b"", headers=bearer(WRITE))
    assert "admin" in assert_error(refused, 403)
    kept = sec.get(f"/stream/{stream_id}", headers=bearer(FULL))
    assert kept.content == b"precious" and kept.headers["x-stream-state"] == "complete"
    # Without force a taken id is still the 409 Loom's clients expect.
    assert_error(sec.post(f"/stream/{stream_id}", content=b"", headers=bearer(WRITE)), 409)
    # A free id needs no admin, force or not.
    fresh = sec.post(f"/stream/{unique('free')}?force=true", content=b"", headers=bearer(WRITE))
    assert fresh.status_code == 201 and "x-stream-replaced" not in fresh.headers
    # write + admin may replace.
    replaced = sec.post(f"/stream/{stream_id}?force=true", content=b"new", headers=bearer(FULL))
    assert replaced.headers["x-stream-replaced"] == "true"


def test_tus_termination_applies_only_to_tus_uploads(sec: httpx.Client) -> None:
    stream_id = unique("plain")
    with sec.stream(
        "POST", f"/stream/{stream_id}", content=iter([b"live bytes"]), headers=bearer(FULL)
    ) as response:
        assert response.status_code == 201
    for token in (WRITE, FULL):
        refused = sec.delete(f"/files/{stream_id}", headers={**TUS, **bearer(token)})
        assert_error(refused, 404)
    assert sec.get(f"/streams/{stream_id}", headers=bearer(FULL)).status_code == 200

    created = sec.post("/files/", headers={**TUS, **bearer(WRITE), "Upload-Length": "5"})
    upload = created.headers["location"]
    assert sec.delete(upload, headers={**TUS, **bearer(WRITE)}).status_code == 204
    upload_id = upload.rsplit("/", 1)[1]
    assert sec.get(f"/streams/{upload_id}", headers=bearer(FULL)).status_code == 404


# -- encoded slashes in ids (item 11) -----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/stream/%2F"),
        ("GET", "/stream/a%2Fb"),
        ("GET", "/stream/a%2fb"),
        ("HEAD", "/stream/a%2Fb"),
        ("POST", "/stream/a%2Fb"),
        ("DELETE", "/stream/build%2F42"),
        ("GET", "/streams/a%2Fb"),
        ("GET", "/files/a%2Fb"),
    ],
)
def test_encoded_slash_in_an_id_is_400(
    open_server: ServerProcess, http: httpx.Client, method: str, target: str
) -> None:
    build = unique("build-42")
    assert http.post(f"/stream/{build}", headers={"X-Stream-Metadata": '{"buildId": "42"}'})
    got = raw(open_server.port, request_head(method, target, b"Content-Length: 0"))
    assert got.status == 400
    if method != "HEAD":
        assert "stream ID" in json.loads(got.body)["error"]
    assert http.get(f"/streams/{build}").status_code == 200  # the reaper did not run
