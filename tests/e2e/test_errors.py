"""Every error path answers ``{"error": "<sentence>"}`` with the right status (SPEC §7),
and bad input never corrupts stored data."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.helpers import module_server
from tests.e2e.test_spy import RawProducer, dechunk, parse_head, unique, wait_until
from tests.server import ServerProcess, raw_request

TOKEN = "errors-full-3a9f1c7e5b2d8a4f6c0e"
READER = "errors-read-8d2b6f0a4e1c9b5d7f3a"
LIMIT = 1000
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONTENT = bytes(range(256)) * 3  # every byte value, not UTF-8


@dataclass
class Answer:
    """A response from httpx or from a raw socket, reduced to what the checks need."""

    status: int
    headers: dict[str, str]
    body: bytes


@pytest.fixture(scope="module")
def error_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(
        tmp_path_factory.mktemp("errors"),
        tokens=[TOKEN, {"token": READER, "scopes": ["read"]}],
        limits={"stream_bytes": LIMIT},
    )


@pytest.fixture
def http(error_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=error_server.url, timeout=10, headers=AUTH) as client:
        yield client


def answer(response: httpx.Response) -> Answer:
    return Answer(response.status_code, dict(response.headers), response.content)


def raw(port: int, head: bytes, body: bytes = b"") -> Answer:
    """Send a request as given (garbage allowed) and parse the answer."""
    data = raw_request(port, head, body)
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    status, headers = parse_head(head_bytes)
    if headers.get("transfer-encoding") == "chunked":
        rest = dechunk(rest)
    return Answer(status, headers, rest)


def request_head(method: str, target: str, *extra: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: 127.0.0.1", *extra]
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def problems_with(
    name: str, got: Answer, status: int, headers: dict[str, str], secrets: list[str]
) -> list[str]:
    """Everything wrong with one error response, as readable lines."""
    found = []
    if got.status != status:
        found.append(f"{name}: status {got.status}, expected {status} ({got.body[:200]!r})")
    if not got.headers.get("content-type", "").startswith("application/json"):
        found.append(f"{name}: content-type {got.headers.get('content-type')!r}")
    try:
        body = json.loads(got.body)
    except ValueError:
        found.append(f"{name}: body is not JSON: {got.body[:200]!r}")
        body = None
    if body is not None:
        if not isinstance(body, dict) or list(body) != ["error"]:
            found.append(f"{name}: body is not exactly {{'error': ...}}: {body!r}")
        elif not isinstance(body["error"], str) or not body["error"].strip():
            found.append(f"{name}: error is not a sentence: {body['error']!r}")
        elif "\n" in body["error"] or len(body["error"]) > 300:
            found.append(f"{name}: error is not one clear sentence: {body['error']!r}")
    text = got.body.decode("utf-8", "replace")
    for leak in ("Traceback", 'File "', ".py", *secrets):
        if leak in text:
            found.append(f"{name}: body leaks {leak!r}: {text[:300]!r}")
    for header, value in headers.items():
        actual = got.headers.get(header.lower())
        if actual is None or not actual.startswith(value):
            found.append(f"{name}: header {header} is {actual!r}, expected {value!r}...")
    return found


def live_stream_without_producer(server: ServerProcess, http: httpx.Client, data: bytes) -> str:
    """A live stream whose producer went away after sending data."""
    with RawProducer(server.port, unique("live"), token=TOKEN) as producer:
        producer.send(data)
    stream_id = producer.id

    def detached() -> bool:
        # 409 with Upload-Offset is the offset mismatch of a stream with no producer;
        # while the producer is still attached it is 409 without it.
        probe = http.patch(f"/stream/{stream_id}", headers={"Upload-Offset": "0"})
        return probe.headers.get("upload-offset") == str(len(data))

    wait_until(detached, what="the producer to detach")
    return stream_id


def test_every_error_path_answers_json_error_with_status_and_headers(
    error_server: ServerProcess, http: httpx.Client
) -> None:
    port = error_server.port
    done = unique("done")
    assert http.post(f"/stream/{done}", content=CONTENT[:100]).status_code == 201
    live = live_stream_without_producer(error_server, http, b"abc")
    no_auth = {"Authorization": ""}
    big_metadata = json.dumps({"pad": "x" * (16 * 1024)})

    cases: list[tuple[str, Callable[[], Answer], int, dict[str, str]]] = [
        # 400: bad input
        ("id starting with a dot", lambda: answer(http.post("/stream/.hidden")), 400, {}),
        ("id too long", lambda: answer(http.post(f"/stream/{'a' * 201}")), 400, {}),
        ("id with a space", lambda: answer(http.get("/stream/a%20b")), 400, {}),
        ("read a bad id", lambda: answer(http.get("/stream/.hidden")), 400, {}),
        (
            "metadata not JSON",
            lambda: answer(http.post(f"/stream/{unique('m')}", headers={"X-Stream-Metadata": "{"})),
            400,
            {},
        ),
        (
            "metadata not an object",
            lambda: answer(
                http.post(f"/stream/{unique('m')}", headers={"X-Stream-Metadata": "[1]"})
            ),
            400,
            {},
        ),
        (
            "metadata too large",
            lambda: answer(
                http.post(f"/stream/{unique('m')}", headers={"X-Stream-Metadata": big_metadata})
            ),
            400,
            {},
        ),
        (
            "metadata not UTF-8",
            lambda: raw(
                port,
                request_head(
                    "POST",
                    f"/stream/{unique('m')}",
                    f"Authorization: Bearer {TOKEN}".encode(),
                    b'X-Stream-Metadata: {"a": "\xff\xfe"}',
                    b"Content-Length: 0",
                ),
            ),
            400,
            {},
        ),
        ("offset not a number", lambda: answer(http.get(f"/stream/{done}?offset=abc")), 400, {}),
        ("negative offset", lambda: answer(http.get(f"/stream/{done}?offset=-1")), 400, {}),
        (
            "Upload-Offset not a number",
            lambda: answer(http.patch(f"/stream/{live}", headers={"Upload-Offset": "x"})),
            400,
            {},
        ),
        ("Upload-Offset missing", lambda: answer(http.patch(f"/stream/{live}")), 400, {}),
        ("unknown list state", lambda: answer(http.get("/streams?state=bogus")), 400, {}),
        ("non-numeric list limit", lambda: answer(http.get("/streams?limit=ten")), 400, {}),
        ("bad list cursor", lambda: answer(http.get("/streams?cursor=%%%")), 400, {}),
        # 401 and 403
        (
            "no token",
            lambda: answer(http.get(f"/stream/{done}", headers=no_auth)),
            401,
            {"WWW-Authenticate": "Bearer"},
        ),
        (
            "unknown token",
            lambda: answer(
                http.post("/stream/x", headers={"Authorization": "Bearer not-a-real-token"})
            ),
            401,
            {"WWW-Authenticate": "Bearer"},
        ),
        (
            "read token writes",
            lambda: answer(
                http.post(f"/stream/{unique('r')}", headers={"Authorization": f"Bearer {READER}"})
            ),
            403,
            {},
        ),
        (
            "read token deletes",
            lambda: answer(
                http.delete(f"/stream/{done}", headers={"Authorization": f"Bearer {READER}"})
            ),
            403,
            {},
        ),
        # 404
        ("read a missing stream", lambda: answer(http.get("/stream/missing")), 404, {}),
        ("info of a missing stream", lambda: answer(http.get("/streams/missing")), 404, {}),
        (
            "resume a missing stream",
            lambda: answer(http.patch("/stream/missing", headers={"Upload-Offset": "0"})),
            404,
            {},
        ),
        ("delete a missing stream", lambda: answer(http.delete("/stream/missing")), 404, {}),
        ("unknown route", lambda: answer(http.get("/no/such/route")), 404, {}),
        (
            "unknown route without token",
            lambda: answer(http.get("/nope", headers=no_auth)),
            404,
            {},
        ),
        # 405
        ("PUT a stream", lambda: answer(http.put(f"/stream/{done}")), 405, {"Allow": ""}),
        ("DELETE the info", lambda: answer(http.delete(f"/streams/{done}")), 405, {"Allow": ""}),
        # 409
        ("id taken", lambda: answer(http.post(f"/stream/{done}", content=b"x")), 409, {}),
        (
            "resume at the wrong offset",
            lambda: answer(http.patch(f"/stream/{live}", headers={"Upload-Offset": "1"})),
            409,
            {"Upload-Offset": "3"},
        ),
        (
            "resume a complete stream",
            lambda: answer(http.patch(f"/stream/{done}", headers={"Upload-Offset": "100"})),
            409,
            {},
        ),
        # 413
        (
            "Content-Length over the limit",
            lambda: answer(http.post(f"/stream/{unique('big')}", content=b"x" * (LIMIT + 1))),
            413,
            {},
        ),
        (
            "resume past the limit",
            lambda: answer(
                http.patch(f"/stream/{live}", content=b"x" * LIMIT, headers={"Upload-Offset": "3"})
            ),
            413,
            {},
        ),
        # 416
        (
            "offset past a finished stream",
            lambda: answer(http.get(f"/stream/{done}?offset=101")),
            416,
            {"Content-Range": "bytes */100"},
        ),
        (
            "range past a finished stream",
            lambda: answer(http.get(f"/stream/{done}", headers={"Range": "bytes=100-"})),
            416,
            {"Content-Range": "bytes */100"},
        ),
    ]
    secrets = [TOKEN, READER, "not-a-real-token", str(error_server.workdir), "/tmp/", "/work/"]
    problems: list[str] = []
    for name, send, status, headers in cases:
        problems += problems_with(name, send(), status, headers, secrets)
    assert problems == [], "\n".join(problems)
    # The exact Loom wordings clients match on.
    assert http.get("/stream/missing").json() == {
        "error": "The stream with ID missing does not exist"
    }
    assert http.post(f"/stream/{done}").json() == {
        "error": f"The stream with ID {done} already exists. "
        "Specify force=true query param to override."
    }


def test_405_allows_every_method_of_the_resource(http: httpx.Client) -> None:
    # RFC 9110 §15.5.6: Allow lists the resource's methods, not one route's.
    resources = {
        "/stream/some-id": "DELETE, GET, HEAD, PATCH, POST",
        "/healthz": "GET, HEAD",
        "/streams/some-id": "GET",
        "/files/some-id": "DELETE, HEAD, OPTIONS, PATCH, POST",
    }
    for path, allow in resources.items():
        response = http.put(path)
        assert response.status_code == 405, path
        assert response.json() == {"error": "Method not allowed."}
        assert response.headers["allow"] == allow, path


def test_refused_requests_store_nothing(http: httpx.Client) -> None:
    refused = {
        unique("bad-meta"): {"X-Stream-Metadata": "not json"},
        unique("too-big"): {},
    }
    for stream_id, headers in refused.items():
        response = http.post(f"/stream/{stream_id}", content=b"x" * (LIMIT + 1), headers=headers)
        assert response.status_code in (400, 413)
        assert http.get(f"/streams/{stream_id}").status_code == 404


def test_metadata_header_of_16_kib_is_accepted_and_one_byte_more_is_400(
    http: httpx.Client,
) -> None:
    pad = 16 * 1024 - len('{"pad":""}')
    fits = '{"pad":"' + "x" * pad + '"}'
    assert len(fits.encode()) == 16 * 1024
    stream_id = unique("meta16k")
    created = http.post(f"/stream/{stream_id}", content=b"x", headers={"X-Stream-Metadata": fits})
    assert created.status_code == 201
    assert http.get(f"/streams/{stream_id}").json()["metadata"] == {"pad": "x" * pad}
    over = fits.replace('"pad":"', '"pad":"x')
    refused = http.post(f"/stream/{unique('meta16k')}", headers={"X-Stream-Metadata": over})
    assert refused.status_code == 400


def test_garbage_headers_never_corrupt_a_stored_stream(
    error_server: ServerProcess, http: httpx.Client
) -> None:
    port = error_server.port
    stream_id = unique("keep")
    metadata = {"buildId": 7, "name": "caf\u00e9"}
    created = http.post(
        f"/stream/{stream_id}",
        content=CONTENT,
        headers={"X-Stream-Metadata": json.dumps(metadata)},
    )
    assert created.status_code == 201
    before_info = http.get(f"/streams/{stream_id}").json()
    auth = f"Authorization: Bearer {TOKEN}".encode()
    target = f"/stream/{stream_id}"
    forced = f"{target}?force=true"
    garbage: list[tuple[bytes, bytes]] = [
        (request_head("POST", target, auth, b"Content-Length: abc"), b"xyz"),
        (request_head("POST", forced, auth, b"Content-Length: abc"), b"xyz"),
        (request_head("POST", forced, auth, b"Content-Length: 3", b"Content-Length: 5"), b"xyz"),
        (request_head("POST", forced, auth, b"Content-Length: -3"), b"xyz"),
        (
            request_head(
                "POST", forced, auth, b"X-Stream-Metadata: \xff\xfe\xfd", b"Content-Length: 3"
            ),
            b"xyz",
        ),
        (request_head("POST", forced, auth, b"X-Stream-Metadata: {", b"Content-Length: 3"), b"xyz"),
        (
            request_head(
                "POST",
                forced,
                auth,
                b'X-Stream-Metadata: {"pad": "' + b"x" * 200_000 + b'"}',
                b"Content-Length: 3",
            ),
            b"xyz",
        ),
        (request_head("POST", forced, auth, f"Content-Length: {LIMIT + 1}".encode()), b"xyz"),
        (
            request_head(
                "POST", forced, auth, b"X-Huge: " + b"h" * 1_000_000, b"X-Stream-Metadata: ["
            ),
            b"",
        ),
        (request_head("GET", target, auth, b"X-Huge: " + b"h" * 1_000_000), b""),
        (request_head("PATCH", target, auth, b"Upload-Offset: abc", b"Content-Length: 3"), b"xyz"),
        (request_head("PATCH", target, auth, b"Upload-Offset: 0", b"Content-Length: 3"), b"xyz"),
        (
            request_head(
                "PATCH",
                target,
                auth,
                f"Upload-Offset: {len(CONTENT)}".encode(),
                b"Content-Length: 3",
            ),
            b"xyz",
        ),
        (request_head("PATCH", target, auth, b"Upload-Offset: 0", b"Content-Length: zz"), b"xyz"),
        (request_head("POST", forced, auth, b"Bad\x00Header: 1", b"Content-Length: 3"), b"xyz"),
        (request_head("POST", forced, auth, b"No colon here", b"Content-Length: 3"), b"xyz"),
        (request_head("GET", target, auth, b"Range: bytes=zz-yy"), b""),
        (request_head("DELETE", target, b"Authorization: Bearer \xff\xfe"), b""),
    ]
    statuses = []
    for head, body in garbage:
        try:
            statuses.append(raw(port, head, body).status)
        except (OSError, ValueError, IndexError):
            statuses.append(0)  # connection dropped: acceptable for garbage
    # Nothing was accepted as a write (the GETs read it unchanged).
    assert all(status in (0, 200) or status >= 400 for status in statuses), statuses
    after = http.get(f"/stream/{stream_id}")
    assert after.status_code == 200
    assert after.content == CONTENT
    assert json.loads(after.headers["x-stream-metadata"]) == metadata
    assert http.get(f"/streams/{stream_id}").json() == before_info


def test_garbage_resume_requests_never_corrupt_a_live_stream(
    error_server: ServerProcess, http: httpx.Client
) -> None:
    port = error_server.port
    stream_id = live_stream_without_producer(error_server, http, b"abc")
    auth = f"Authorization: Bearer {TOKEN}".encode()
    target = f"/stream/{stream_id}"
    for head, body in [
        (request_head("PATCH", target, auth, b"Upload-Offset: x", b"Content-Length: 3"), b"BAD"),
        (request_head("PATCH", target, auth, b"Upload-Offset: 1", b"Content-Length: 3"), b"BAD"),
        (request_head("PATCH", target, auth, b"Upload-Offset: 3", b"Content-Length: q"), b"BAD"),
        (request_head("PATCH", target, auth, b"Upload-Offset: -3", b"Content-Length: 3"), b"BAD"),
        (request_head("POST", target, auth, b"Content-Length: 3"), b"BAD"),
        (request_head("PATCH", target, b"Upload-Offset: 3", b"Content-Length: 3"), b"BAD"),
    ]:
        try:
            assert raw(port, head, body).status >= 400
        except (OSError, ValueError, IndexError):
            pass  # connection dropped: acceptable for garbage
    resumed = http.patch(
        target, content=b"def", headers={"Upload-Offset": "3", "Upload-Complete": "?1"}
    )
    assert resumed.status_code == 204
    assert http.get(target).content == b"abcdef"


def test_unparsable_request_still_gets_a_json_error(error_server: ServerProcess) -> None:
    got = raw(
        error_server.port,
        request_head("POST", f"/stream/{unique('cl')}", b"Content-Length: abc"),
        b"xyz",
    )
    assert got.status == 400
    assert got.headers.get("content-type", "").startswith("application/json")
    assert list(json.loads(got.body)) == ["error"]


def test_suffix_range_on_empty_stream_is_not_a_malformed_206(http: httpx.Client) -> None:
    stream_id = unique("empty")
    assert http.post(f"/stream/{stream_id}", content=b"").status_code == 201
    response = http.get(f"/stream/{stream_id}", headers={"Range": "bytes=-5"})
    assert response.content == b""
    if response.status_code == 206:
        raise AssertionError(f"206 with Content-Range {response.headers.get('content-range')!r}")
    assert response.status_code in (200, 416)
