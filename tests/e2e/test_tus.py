"""``/files/``: tus 1.0.0 against a real server (SPEC §10), at the protocol level
with httpx and with real clients (tuspy, and tus-js-client under node)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest
from tusclient import client as tus_client

from tests.server import ServerProcess, raw_request

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}
EXTENSIONS = "creation,creation-with-upload,creation-defer-length,termination,checksum,expiration"
HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "md5": hashlib.md5}
TUS_JS = Path(__file__).resolve().parents[1] / "tus_js"


# -- fixtures and helpers ---------------------------------------------------------


@pytest.fixture(scope="module")
def tus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One default server for the tests that only create their own uploads."""
    server = ServerProcess(tmp_path_factory.mktemp("tus")).start()
    yield server
    server.stop()


@pytest.fixture
def http(tus_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tus_server.url, timeout=10) as client:
        yield client


def encode_metadata(metadata: dict[str, str]) -> str:
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" if value else key
        for key, value in metadata.items()
    )


def decode_metadata(header: str) -> dict[str, str]:
    pairs = (pair.strip().partition(" ") for pair in header.split(","))
    return {key: base64.b64decode(value).decode() for key, _, value in pairs}


def create(
    http: httpx.Client,
    *,
    length: int | None = None,
    metadata: dict[str, str] | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = dict(TUS)
    if length is None:
        sent["Upload-Defer-Length"] = "1"
    else:
        sent["Upload-Length"] = str(length)
    if metadata is not None:
        sent["Upload-Metadata"] = encode_metadata(metadata)
    if body is not None:
        sent["Content-Type"] = "application/offset+octet-stream"
    sent.update(headers or {})
    return http.post("/files/", headers=sent, content=body)


def new_upload(http: httpx.Client, length: int | None = None) -> str:
    created = create(http, length=length)
    assert created.status_code == 201, created.text
    return created.headers["location"].rsplit("/", 1)[-1]


def patch(
    http: httpx.Client,
    upload_id: str,
    offset: int,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {**OCTETS, "Upload-Offset": str(offset), **(headers or {})}
    return http.patch(f"/files/{upload_id}", headers=sent, content=body)


def checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(HASHES[algorithm](data).digest()).decode()}"


def stored(http: httpx.Client, upload_id: str) -> bytes:
    return http.get(f"/stream/{upload_id}", params={"notail": ""}).content


def stream_info(http: httpx.Client, upload_id: str) -> dict[str, object]:
    response = http.get(f"/streams/{upload_id}")
    assert response.status_code == 200, response.text
    info: dict[str, object] = response.json()
    return info


def header_set(response: httpx.Response, name: str) -> set[str]:
    return {item.strip().lower() for item in response.headers[name].split(",")}


def newest_stream(http: httpx.Client) -> list[str]:
    """The id of the newest stream, to show that a refused request created none."""
    return [info["id"] for info in http.get("/streams", params={"limit": 1}).json()["streams"]]


def assert_tus_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.headers["access-control-allow-origin"] == "*"
    if response.request.method != "HEAD":
        assert set(response.json()) == {"error"}


# -- discovery and CORS ------------------------------------------------------------


def test_options_advertises_version_extensions_and_checksum_algorithms(
    http: httpx.Client,
) -> None:
    response = http.options("/files/")
    assert response.status_code == 204
    assert response.headers["tus-version"] == "1.0.0"
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.headers["tus-extension"] == EXTENSIONS
    assert response.headers["tus-checksum-algorithm"] == "sha1,sha256,md5"
    assert "tus-max-size" not in response.headers  # no limits.stream_bytes


def test_cors_preflight_and_responses_let_a_browser_client_through(http: httpx.Client) -> None:
    preflight = http.options(
        "/files/01ANYTHING",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization,tus-resumable,upload-offset",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    methods = {m.strip() for m in preflight.headers["access-control-allow-methods"].split(",")}
    assert {"POST", "HEAD", "PATCH", "DELETE", "OPTIONS"} <= methods
    allowed = {
        h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")
    }
    assert {
        "authorization",
        "content-type",
        "upload-offset",
        "upload-length",
        "upload-metadata",
        "upload-defer-length",
        "upload-checksum",
        "tus-resumable",
        "x-http-method-override",
        "x-requested-with",
    } <= allowed

    created = create(http, length=3, headers={"Origin": "https://app.example"})
    missing = http.head("/files/01NOSUCHUPLOAD", headers=TUS)
    for response in (created, missing):
        assert response.headers["access-control-allow-origin"] == "*"
        exposed = {
            h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")
        }
        assert {"location", "upload-offset", "upload-length", "upload-expires"} <= exposed
        assert {"tus-resumable", "tus-version", "upload-metadata", "upload-defer-length"} <= exposed


# -- creation ----------------------------------------------------------------------


def test_creation_answers_201_with_location_and_makes_a_live_stream_with_the_metadata(
    http: httpx.Client,
) -> None:
    metadata = {"filename": "naïve ☃.txt", "filetype": "text/plain", "flag": ""}
    created = create(http, length=10, metadata=metadata)
    assert created.status_code == 201
    assert created.headers["tus-resumable"] == "1.0.0"
    location = created.headers["location"]
    assert location.startswith("/files/")
    upload_id = location.rsplit("/", 1)[-1]
    assert created.headers["upload-offset"] == "0"

    info = stream_info(http, upload_id)
    assert info["state"] == "live"
    assert info["size"] == 0
    # A key sent without a value is stored as the empty string.
    assert info["metadata"] == metadata

    head = http.head(location, headers=TUS)
    assert head.status_code == 200
    assert head.headers["upload-offset"] == "0"
    assert head.headers["upload-length"] == "10"
    assert "upload-defer-length" not in head.headers
    assert head.headers["cache-control"] == "no-store"
    assert decode_metadata(head.headers["upload-metadata"]) == metadata


def test_zero_length_upload_is_complete_at_creation(http: httpx.Client) -> None:
    upload_id = new_upload(http, length=0)
    head = http.head(f"/files/{upload_id}", headers=TUS)
    assert (head.headers["upload-offset"], head.headers["upload-length"]) == ("0", "0")
    info = stream_info(http, upload_id)
    assert info["state"] == "complete"
    assert info["sha256"] == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-length"),
        pytest.param({"Upload-Length": "5", "Upload-Defer-Length": "1"}, id="both"),
        pytest.param({"Upload-Defer-Length": "2"}, id="defer-not-1"),
        pytest.param({"Upload-Length": "-1"}, id="negative-length"),
        pytest.param({"Upload-Length": "5", "Upload-Metadata": "name !!!"}, id="bad-base64"),
        pytest.param({"Upload-Length": "5", "Upload-Metadata": "a YQ==,a Yg=="}, id="dup-key"),
    ],
)
def test_creation_with_bad_headers_is_400_and_creates_nothing(
    http: httpx.Client, headers: dict[str, str]
) -> None:
    before = newest_stream(http)
    response = http.post("/files/", headers={**TUS, **headers})
    assert_tus_error(response, 400)
    assert newest_stream(http) == before


def test_creation_with_upload_stores_the_body_and_reports_its_offset(http: httpx.Client) -> None:
    partial = create(http, length=6, body=b"abc")
    assert partial.status_code == 201
    assert partial.headers["upload-offset"] == "3"
    upload_id = partial.headers["location"].rsplit("/", 1)[-1]
    assert stream_info(http, upload_id)["state"] == "live"
    assert patch(http, upload_id, 3, b"def").headers["upload-offset"] == "6"
    assert stream_info(http, upload_id)["state"] == "complete"

    whole = create(http, length=4, body=b"full")
    assert whole.status_code == 201
    assert whole.headers["upload-offset"] == "4"
    assert "upload-expires" not in whole.headers  # complete: nothing left to expire
    whole_id = whole.headers["location"].rsplit("/", 1)[-1]
    assert stored(http, whole_id) == b"full"
    assert stream_info(http, whole_id)["state"] == "complete"


def test_creation_with_upload_longer_than_upload_length_is_413_and_creates_nothing(
    http: httpx.Client,
) -> None:
    before = newest_stream(http)
    response = create(http, length=2, body=b"too long")
    assert_tus_error(response, 413)
    assert newest_stream(http) == before


# -- PATCH -------------------------------------------------------------------------


def test_patches_at_the_right_offsets_complete_the_stream_with_the_right_digest(
    http: httpx.Client,
) -> None:
    upload_id = new_upload(http, length=11)
    first = patch(http, upload_id, 0, b"hello ")
    assert first.status_code == 204
    assert first.headers["upload-offset"] == "6"
    assert first.headers["tus-resumable"] == "1.0.0"
    assert stream_info(http, upload_id)["state"] == "live"

    last = patch(http, upload_id, 6, b"world")
    assert last.status_code == 204
    assert last.headers["upload-offset"] == "11"
    info = stream_info(http, upload_id)
    assert info["state"] == "complete"
    assert info["sha256"] == hashlib.sha256(b"hello world").hexdigest()
    assert stored(http, upload_id) == b"hello world"

    # A client that lost the last response and retries it is told it is done.
    retried = patch(http, upload_id, 11, b"")
    assert retried.status_code == 204
    assert retried.headers["upload-offset"] == "11"
    assert_tus_error(patch(http, upload_id, 6, b"world"), 409)


def test_patch_at_a_wrong_offset_is_409_with_the_current_offset_and_stores_nothing(
    http: httpx.Client,
) -> None:
    upload_id = new_upload(http, length=10)
    assert patch(http, upload_id, 0, b"abc").status_code == 204
    for offset in (0, 5):
        response = patch(http, upload_id, offset, b"xyz")
        assert_tus_error(response, 409)
        assert response.headers["upload-offset"] == "3"
    assert stored(http, upload_id) == b"abc"


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "text/plain"])
def test_patch_without_offset_octet_stream_content_type_is_415_and_stores_nothing(
    http: httpx.Client, content_type: str | None
) -> None:
    upload_id = new_upload(http, length=10)
    headers = {**TUS, "Upload-Offset": "0"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = http.patch(f"/files/{upload_id}", headers=headers, content=b"abc")
    assert_tus_error(response, 415)
    assert stored(http, upload_id) == b""


def test_requests_without_tus_resumable_1_0_0_are_412_with_tus_version(
    http: httpx.Client,
) -> None:
    upload_id = new_upload(http, length=10)
    old = {"Tus-Resumable": "0.2.2", "Upload-Length": "5"}
    for response in (
        http.post("/files/", headers=old),
        http.patch(
            f"/files/{upload_id}",
            headers={"Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"},
            content=b"abc",
        ),
        http.head(f"/files/{upload_id}", headers={"Tus-Resumable": "2.0.0"}),
    ):
        assert_tus_error(response, 412)
        assert response.headers["tus-version"] == "1.0.0"
    assert stored(http, upload_id) == b""


def test_deferred_length_upload_completes_once_a_patch_declares_the_length(
    http: httpx.Client,
) -> None:
    upload_id = new_upload(http, length=None)
    head = http.head(f"/files/{upload_id}", headers=TUS)
    assert head.headers["upload-defer-length"] == "1"
    assert "upload-length" not in head.headers

    assert patch(http, upload_id, 0, b"hello ").status_code == 204
    assert_tus_error(patch(http, upload_id, 6, b"", {"Upload-Length": "4"}), 400)
    assert stream_info(http, upload_id)["state"] == "live"

    last = patch(http, upload_id, 6, b"world", {"Upload-Length": "11"})
    assert last.status_code == 204
    assert last.headers["upload-offset"] == "11"
    head = http.head(f"/files/{upload_id}", headers=TUS)
    assert head.headers["upload-length"] == "11"
    assert "upload-defer-length" not in head.headers
    assert stream_info(http, upload_id)["state"] == "complete"
    assert stored(http, upload_id) == b"hello world"


def test_deferred_length_declared_by_an_empty_patch_completes_the_stream(
    http: httpx.Client,
) -> None:
    upload_id = new_upload(http, length=None)
    assert patch(http, upload_id, 0, b"all of it").status_code == 204
    declared = patch(http, upload_id, 9, b"", {"Upload-Length": "9"})
    assert declared.status_code == 204
    assert declared.headers["upload-offset"] == "9"
    assert stream_info(http, upload_id)["state"] == "complete"


def test_stream_posted_at_stream_is_a_finished_upload_with_its_metadata_at_files(
    http: httpx.Client,
) -> None:
    metadata = {"job": "build", "attempt": 2, "ok": True, "has space": "x", "ключ": "v"}
    posted = http.post(
        "/stream/tus-posted",
        headers={"X-Stream-Metadata": json.dumps(metadata)},
        content=b"from a pipe\n",
    )
    assert posted.status_code == 201
    head = http.head("/files/tus-posted", headers=TUS)
    assert head.status_code == 200
    assert head.headers["upload-offset"] == head.headers["upload-length"] == "12"
    head.headers.encoding = "utf-8"  # the non-ASCII key goes out as its UTF-8 bytes
    # Non-string values travel as their JSON text; a key with a space cannot travel.
    assert decode_metadata(head.headers["upload-metadata"]) == {
        "job": "build",
        "attempt": "2",
        "ok": "true",
        "ключ": "v",
    }


# -- checksum ----------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5"])
def test_patch_with_a_matching_checksum_is_stored(http: httpx.Client, algorithm: str) -> None:
    upload_id = new_upload(http, length=10)
    body = b"checked!!!"
    response = patch(http, upload_id, 0, body, {"Upload-Checksum": checksum(algorithm, body)})
    assert response.status_code == 204
    assert response.headers["upload-offset"] == "10"
    assert stored(http, upload_id) == body


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5"])
def test_patch_with_a_mismatching_checksum_is_460_and_stores_nothing(
    http: httpx.Client, algorithm: str
) -> None:
    upload_id = new_upload(http, length=11)
    assert patch(http, upload_id, 0, b"ok").status_code == 204
    wrong = checksum(algorithm, b"other bytes")
    response = patch(http, upload_id, 2, b"corrupted", {"Upload-Checksum": wrong})
    assert_tus_error(response, 460)
    head = http.head(f"/files/{upload_id}", headers=TUS)
    assert head.headers["upload-offset"] == "2"
    assert stored(http, upload_id) == b"ok"
    # The upload is not left locked: the good retry goes through.
    good = checksum(algorithm, b"corrected")
    assert patch(http, upload_id, 2, b"corrected", {"Upload-Checksum": good}).status_code == 204


def test_patch_with_an_unsupported_checksum_algorithm_is_400_and_stores_nothing(
    http: httpx.Client,
) -> None:
    upload_id = new_upload(http, length=10)
    response = patch(http, upload_id, 0, b"abc", {"Upload-Checksum": "crc32 AAAAAA=="})
    assert_tus_error(response, 400)
    assert stored(http, upload_id) == b""


def test_checksummed_patch_declaring_more_than_64_mib_is_413_before_its_body(
    tus_server: ServerProcess, http: httpx.Client
) -> None:
    upload_id = new_upload(http, length=None)
    head = (
        f"PATCH /files/{upload_id} HTTP/1.1\r\nHost: test\r\nTus-Resumable: 1.0.0\r\n"
        "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
        "Upload-Checksum: sha1 AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n"
        f"Content-Length: {64 * 1024 * 1024 + 1}\r\nConnection: close\r\n\r\n"
    ).encode()
    answer = raw_request(tus_server.port, head)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert stored(http, upload_id) == b""


# -- termination, expiration, method override ---------------------------------------


def test_terminated_upload_is_404_at_files_and_at_stream(http: httpx.Client) -> None:
    upload_id = new_upload(http, length=10)
    assert patch(http, upload_id, 0, b"part").status_code == 204
    deleted = http.delete(f"/files/{upload_id}", headers=TUS)
    assert deleted.status_code == 204
    assert deleted.headers["tus-resumable"] == "1.0.0"

    assert_tus_error(http.head(f"/files/{upload_id}", headers=TUS), 404)
    assert "upload-offset" not in http.head(f"/files/{upload_id}", headers=TUS).headers
    assert_tus_error(patch(http, upload_id, 4, b"more"), 404)
    assert_tus_error(http.delete(f"/files/{upload_id}", headers=TUS), 404)
    assert http.get(f"/stream/{upload_id}").status_code == 404


def assert_expires_in_about(response: httpx.Response, seconds: float) -> None:
    expires = parsedate_to_datetime(response.headers["upload-expires"])
    expected = datetime.now(UTC) + timedelta(seconds=seconds)
    assert abs(expires - expected) < timedelta(seconds=30)


def test_unfinished_upload_carries_upload_expires_until_it_completes(
    http: httpx.Client,
) -> None:
    created = create(http, length=4)
    assert_expires_in_about(created, 600)  # abandon_after's default
    upload_id = created.headers["location"].rsplit("/", 1)[-1]
    partial = patch(http, upload_id, 0, b"ab")
    assert_expires_in_about(partial, 600)
    assert_expires_in_about(http.head(f"/files/{upload_id}", headers=TUS), 600)
    assert "upload-expires" not in patch(http, upload_id, 2, b"cd").headers
    assert "upload-expires" not in http.head(f"/files/{upload_id}", headers=TUS).headers


def test_expired_upload_is_410_and_keeps_its_bytes_as_an_abandoned_stream(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(abandon_after=0.5)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        upload_id = new_upload(http, length=100)
        partial = patch(http, upload_id, 0, b"partial")
        assert_expires_in_about(partial, 0.5)
        # A tailing reader's response ends when the stream leaves live.
        tailed = http.get(f"/stream/{upload_id}")
        assert tailed.content == b"partial"
        assert stream_info(http, upload_id)["state"] == "abandoned"

        assert_tus_error(http.head(f"/files/{upload_id}", headers=TUS), 410)
        assert_tus_error(patch(http, upload_id, 7, b"late"), 410)
        assert stored(http, upload_id) == b"partial"


def test_post_with_method_override_acts_as_patch_head_and_delete(http: httpx.Client) -> None:
    upload_id = new_upload(http, length=10)
    url = f"/files/{upload_id}"
    patched = http.post(
        url,
        headers={**OCTETS, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"},
        content=b"abc",
    )
    assert patched.status_code == 204
    assert patched.headers["upload-offset"] == "3"
    head = http.post(url, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})
    assert head.headers["upload-offset"] == "3"
    assert head.headers["upload-length"] == "10"
    assert http.post(url, headers={**TUS, "X-HTTP-Method-Override": "DELETE"}).status_code == 204
    assert_tus_error(http.head(url, headers=TUS), 404)
    assert_tus_error(http.post(url, headers=TUS), 405)


# -- limits and auth ----------------------------------------------------------------


def test_stream_size_limit_is_tus_max_size_and_larger_uploads_are_413(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(limits={"stream_bytes": 1000})
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.options("/files/").headers["tus-max-size"] == "1000"
        assert_tus_error(create(http, length=1001), 413)
        assert create(http, length=1000).status_code == 201

        upload_id = new_upload(http, length=None)
        assert patch(http, upload_id, 0, b"x" * 600).status_code == 204
        assert_tus_error(patch(http, upload_id, 600, b"y" * 401), 413)
        assert stored(http, upload_id) == b"x" * 600


def test_tus_needs_write_scope_and_deleting_a_finished_upload_needs_admin(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(
        tokens=[
            {"token": "writer", "scopes": ["write"]},
            {"token": "reader", "scopes": ["read"]},
            {"token": "boss", "scopes": ["admin"]},
        ]
    )
    writer = {"Authorization": "Bearer writer"}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.options("/files/").status_code == 204  # discovery and preflight: no token
        anonymous = create(http, length=3)
        assert_tus_error(anonymous, 401)
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert_tus_error(create(http, length=3, headers={"Authorization": "Bearer reader"}), 403)

        finished = new_upload_with(http, writer, length=3)
        assert patch(http, finished, 0, b"abc", writer).status_code == 204
        assert http.head(f"/files/{finished}", headers={**TUS, **writer}).status_code == 200
        assert_tus_error(http.delete(f"/files/{finished}", headers={**TUS, **writer}), 403)
        boss = {**TUS, "Authorization": "Bearer boss"}
        assert http.delete(f"/files/{finished}", headers=boss).status_code == 204

        cancelled = new_upload_with(http, writer, length=3)
        assert http.delete(f"/files/{cancelled}", headers={**TUS, **writer}).status_code == 204
        assert_tus_error(http.head(f"/files/{cancelled}", headers={**TUS, **writer}), 404)


def new_upload_with(http: httpx.Client, headers: dict[str, str], length: int) -> str:
    created = create(http, length=length, headers=headers)
    assert created.status_code == 201, created.text
    return created.headers["location"].rsplit("/", 1)[-1]


# -- live tail and concurrency -------------------------------------------------------


async def held_body(first: bytes, rest: bytes, release: asyncio.Event) -> AsyncIterator[bytes]:
    yield first
    await release.wait()
    yield rest


async def test_reader_sees_an_in_flight_patch_and_a_second_writer_gets_423(
    tus_server: ServerProcess,
) -> None:
    first, rest = b"first line\n" * 100, b"second line\n" * 100
    total = len(first) + len(rest)
    release = asyncio.Event()
    async with httpx.AsyncClient(base_url=tus_server.url, timeout=10) as http:
        created = await http.post("/files/", headers={**TUS, "Upload-Length": str(total)})
        upload_id = created.headers["location"].rsplit("/", 1)[-1]
        writing = asyncio.create_task(
            http.patch(
                f"/files/{upload_id}",
                headers={**OCTETS, "Upload-Offset": "0"},
                content=held_body(first, rest, release),
            )
        )
        try:
            async with http.stream("GET", f"/stream/{upload_id}") as reader:
                assert reader.headers["x-stream-state"] == "live"
                received = bytearray()
                chunks = reader.aiter_bytes()
                while len(received) < len(first):
                    received += await anext(chunks)
                assert received == first
                assert not writing.done()  # seen while the PATCH body is still open

                busy = await http.patch(
                    f"/files/{upload_id}",
                    headers={**OCTETS, "Upload-Offset": str(len(first))},
                    content=b"intruder",
                )
                assert busy.status_code == 423
                assert busy.headers["tus-resumable"] == "1.0.0"

                release.set()
                async for chunk in chunks:
                    received += chunk
        finally:
            release.set()
            done = await writing
        assert done.status_code == 204
        assert done.headers["upload-offset"] == str(total)
        assert bytes(received) == first + rest
        info = (await http.get(f"/streams/{upload_id}")).json()
        assert info["state"] == "complete"
        assert info["sha256"] == hashlib.sha256(first + rest).hexdigest()


# -- tuspy ---------------------------------------------------------------------------


def upload_id_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def test_tuspy_uploads_a_file_with_metadata_in_checksummed_chunks_byte_exact(
    tus_server: ServerProcess, http: httpx.Client, tmp_path: Path
) -> None:
    data = os.urandom(300_000)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    metadata = {"filename": "payload.bin", "note": "ünïcode ok"}
    tus = tus_client.TusClient(f"{tus_server.url}/files/")
    with path.open("rb") as file:
        uploader = tus.uploader(
            file_stream=file, chunk_size=64 * 1024, metadata=metadata, upload_checksum=True
        )
        uploader.upload()
    assert uploader.url is not None
    upload_id = upload_id_of(uploader.url)
    info = stream_info(http, upload_id)
    assert info["state"] == "complete"
    assert info["metadata"] == metadata
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert http.get(f"/stream/{upload_id}").content == data


@pytest.mark.parametrize("crash", [False, True], ids=["stopped", "server-crashed"])
def test_tuspy_resumes_an_interrupted_upload_byte_exact(
    server_factory: Callable[..., ServerProcess], tmp_path: Path, crash: bool
) -> None:
    server = server_factory()
    data = os.urandom(200_000)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    tus = tus_client.TusClient(f"{server.url}/files/")
    with path.open("rb") as file:
        first = tus.uploader(file_stream=file, chunk_size=50_000, metadata={"run": "1"})
        first.upload(stop_at=100_000)
    assert first.url is not None
    upload_id = upload_id_of(first.url)
    if crash:
        server.kill()
        server.start()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        head = http.head(f"/files/{upload_id}", headers=TUS)
        assert head.headers["upload-offset"] == "100000"
        assert stream_info(http, upload_id)["state"] == "live"

        with path.open("rb") as file:
            resumed = tus.uploader(file_stream=file, url=first.url, chunk_size=50_000)
            assert resumed.offset == 100_000
            resumed.upload()
        info = stream_info(http, upload_id)
        assert info["state"] == "complete"
        assert info["metadata"] == {"run": "1"}
        assert http.get(f"/stream/{upload_id}").content == data


# -- tus-js-client --------------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with tus-js-client installed in tests/tus_js. Without
    them the tests skip and say why, or fail when TUS_JS_REQUIRED=1 (for CI)."""
    give_up = pytest.fail if os.environ.get("TUS_JS_REQUIRED") == "1" else pytest.skip
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        give_up("node and npm are needed to run tus-js-client")
    assert node is not None and npm is not None
    if not (TUS_JS / "node_modules" / "tus-js-client").is_dir():
        try:
            subprocess.run(
                [npm, "install", "--no-audit", "--no-fund"],
                cwd=TUS_JS,
                capture_output=True,
                text=True,
                timeout=45,
                check=True,
            )
        except subprocess.CalledProcessError as exc:
            give_up(f"npm install in tests/tus_js failed: {exc.stderr.strip()[-500:]}")
        except subprocess.TimeoutExpired:
            give_up("npm install in tests/tus_js took longer than 45 s")
    return node


def run_tus_js(node: str, endpoint: str, file: Path, **options: object) -> str:
    """Run tests/tus_js/upload.mjs; return the upload URL it prints."""
    result = subprocess.run(
        [node, str(TUS_JS / "upload.mjs"), endpoint, str(file), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_tus_js_client_uploads_a_file_with_metadata_byte_exact(
    node: str, tus_server: ServerProcess, http: httpx.Client, tmp_path: Path
) -> None:
    data = os.urandom(250_000)
    path = tmp_path / "build.log"
    path.write_bytes(data)
    metadata = {"filename": "build.log", "filetype": "text/plain", "team": "café"}
    url = run_tus_js(node, f"{tus_server.url}/files/", path, metadata=metadata)
    assert url.startswith(f"{tus_server.url}/files/")
    upload_id = upload_id_of(url)
    info = stream_info(http, upload_id)
    assert info["state"] == "complete"
    assert info["metadata"] == metadata
    assert http.get(f"/stream/{upload_id}").content == data


def test_tus_js_client_resumes_an_aborted_upload_from_its_url_byte_exact(
    node: str, tus_server: ServerProcess, http: httpx.Client, tmp_path: Path
) -> None:
    data = os.urandom(200_000)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    endpoint = f"{tus_server.url}/files/"
    url = run_tus_js(
        node,
        endpoint,
        path,
        metadata={"filename": "big.bin"},
        chunkSize=64 * 1024,
        stopAfterChunks=1,
    )
    upload_id = upload_id_of(url)
    head = http.head(f"/files/{upload_id}", headers=TUS)
    assert head.headers["upload-offset"] == str(64 * 1024)
    assert stream_info(http, upload_id)["state"] == "live"

    # The resumed run sends its PATCHes as POST + X-HTTP-Method-Override.
    resumed = run_tus_js(
        node, endpoint, path, uploadUrl=url, chunkSize=64 * 1024, overridePatchMethod=True
    )
    assert resumed == url
    info = stream_info(http, upload_id)
    assert info["state"] == "complete"
    assert info["metadata"] == {"filename": "big.bin"}
    assert http.get(f"/stream/{upload_id}").content == data
