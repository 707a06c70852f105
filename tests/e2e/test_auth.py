"""Bearer tokens and scopes (SPEC §6)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.e2e.helpers import module_server
from tests.e2e.test_spy import RawProducer, SpyClient, unique, wait_until
from tests.server import ServerProcess

# Distinctive values, so finding one in a log or a body cannot be a coincidence.
FULL = "full-7c1e0f5a9b2d4e68a3f0c9d1"
READ = "read-4b8d2a6f1e9c3b7d5a0e8f2c"
WRITE = "write-9e3a7c1f5b0d8e2a6c4f1b7d"
ADMIN = "admin-2f6b0e4a8c1d9f3b7e5a0c6d"
UNKNOWN = "unknown-5d9f3b7e1a0c4e8b2d6f"
TOKENS = [
    FULL,
    {"token": READ, "scopes": ["read"]},
    {"token": WRITE, "scopes": ["write"]},
    {"token": ADMIN, "scopes": ["admin"]},
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory.mktemp("auth"), tokens=TOKENS)


@pytest.fixture
def http(auth_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=auth_server.url, timeout=10) as client:
        yield client


@pytest.fixture
def finished(http: httpx.Client) -> str:
    """A complete stream, made with the full-access token."""
    stream_id = unique("done")
    assert http.post(f"/stream/{stream_id}", content=b"data", headers=bearer(FULL)).status_code
    return stream_id


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    if response.request.method != "HEAD":
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert list(body) == ["error"] and body["error"]


def assert_403(response: httpx.Response) -> None:
    assert response.status_code == 403
    if response.request.method != "HEAD":
        body = response.json()
        assert list(body) == ["error"] and body["error"]


def test_open_server_without_tokens_allows_everything(
    server: ServerProcess, client: httpx.Client
) -> None:
    assert client.post("/stream/open", content=b"x").status_code == 201
    assert client.get("/stream/open").content == b"x"
    assert client.head("/stream/open").status_code == 200
    assert client.get("/streams/open").status_code == 200
    with client.stream("GET", "/spy") as spy:
        assert spy.status_code == 200
    assert client.delete("/stream/open").status_code == 204
    # Listening on loopback only: no warning about the open API.
    assert not any("no tokens configured" in line for line in server.log)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/stream/new-one"),
        ("POST", "/stream"),
        ("GET", "/stream/anything"),
        ("HEAD", "/stream/anything"),
        ("PATCH", "/stream/anything"),
        ("DELETE", "/stream/anything"),
        ("DELETE", "/stream/build/7"),
        ("GET", "/streams/anything"),
        ("GET", "/spy"),
    ],
)
@pytest.mark.parametrize(
    "authorization",
    [None, f"Bearer {UNKNOWN}", "Bearer", f"Basic {FULL}", FULL, f"Bearer {FULL}x"],
)
def test_missing_or_unknown_token_is_401_with_www_authenticate(
    http: httpx.Client, method: str, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    assert_401(
        http.request(method, path, headers=headers, content=b"x" if method != "GET" else None)
    )


def test_rejected_producer_stores_nothing(http: httpx.Client) -> None:
    stream_id = unique("refused")
    assert_401(http.post(f"/stream/{stream_id}", content=b"x"))
    assert_403(http.post(f"/stream/{stream_id}", content=b"x", headers=bearer(READ)))
    assert http.get(f"/streams/{stream_id}", headers=bearer(FULL)).status_code == 404


def test_read_token_reads_streams_info_and_spy(
    auth_server: ServerProcess, http: httpx.Client, finished: str
) -> None:
    headers = bearer(READ)
    got = http.get(f"/stream/{finished}", headers=headers)
    assert (got.status_code, got.content) == (200, b"data")
    assert http.head(f"/stream/{finished}", headers=headers).status_code == 200
    assert http.get(f"/streams/{finished}", headers=headers).json()["size"] == 4
    with SpyClient(auth_server.port, token=READ) as spy:
        assert spy.status == 200


def test_read_token_cannot_post_patch_or_delete(http: httpx.Client, finished: str) -> None:
    headers = bearer(READ)
    assert_403(http.post(f"/stream/{unique('r')}", content=b"x", headers=headers))
    assert_403(
        http.patch(f"/stream/{finished}", content=b"x", headers={**headers, "Upload-Offset": "4"})
    )
    assert_403(http.delete(f"/stream/{finished}", headers=headers))
    assert_403(http.delete("/stream/build/1", headers=headers))
    assert http.get(f"/stream/{finished}", headers=bearer(FULL)).content == b"data"


def test_write_token_posts_patches_and_heads(
    auth_server: ServerProcess, http: httpx.Client
) -> None:
    headers = bearer(WRITE)
    created = http.post(f"/stream/{unique('w')}", content=b"x", headers=headers)
    assert created.status_code == 201
    assert created.json()["state"] == "complete"
    with RawProducer(auth_server.port, unique("w"), token=WRITE) as producer:
        assert producer.status == 201
        producer.send(b"abc")
    stream_id = producer.id
    # The producer went away; a write token finds the offset and resumes.
    wait_until(
        lambda: http.head(f"/stream/{stream_id}", headers=headers).headers["upload-offset"] == "3",
        what="Upload-Offset 3",
    )
    resumed = http.patch(
        f"/stream/{stream_id}",
        content=b"def",
        headers={**headers, "Upload-Offset": "3", "Upload-Complete": "?1"},
    )
    assert resumed.status_code == 204
    assert resumed.headers["upload-offset"] == "6"
    assert http.get(f"/stream/{stream_id}", headers=bearer(READ)).content == b"abcdef"


def test_write_token_cannot_get_or_delete(
    auth_server: ServerProcess, http: httpx.Client, finished: str
) -> None:
    headers = bearer(WRITE)
    assert_403(http.get(f"/stream/{finished}", headers=headers))
    assert_403(http.get(f"/streams/{finished}", headers=headers))
    assert_403(http.get("/spy", headers=headers))
    assert_403(http.delete(f"/stream/{finished}", headers=headers))
    assert_403(http.delete("/stream/build/1", headers=headers))


def test_admin_token_deletes_but_does_not_read_or_write(http: httpx.Client, finished: str) -> None:
    headers = bearer(ADMIN)
    assert_403(http.get(f"/stream/{finished}", headers=headers))
    assert_403(http.post(f"/stream/{unique('a')}", content=b"x", headers=headers))
    build = unique("bld")
    doomed = f"build-{build}-1"
    http.post(f"/stream/{doomed}", content=b"x", headers=bearer(FULL))
    reaped = http.delete(f"/stream/build/{build}", headers=headers)
    assert reaped.status_code == 200 and reaped.json()["deleted"] == [doomed]
    assert http.delete(f"/stream/{finished}", headers=headers).status_code == 204
    assert http.get(f"/stream/{finished}", headers=bearer(FULL)).status_code == 404


def test_full_access_string_token_may_do_everything(http: httpx.Client) -> None:
    headers = bearer(FULL)
    stream_id = unique("full")
    assert http.post(f"/stream/{stream_id}", content=b"x", headers=headers).status_code == 201
    assert http.get(f"/stream/{stream_id}", headers=headers).content == b"x"
    assert http.delete(f"/stream/{stream_id}", headers=headers).status_code == 204


def test_bearer_scheme_is_case_insensitive(http: httpx.Client, finished: str) -> None:
    response = http.get(f"/stream/{finished}", headers={"Authorization": f"bearer {READ}"})
    assert response.status_code == 200


def test_health_endpoints_need_no_token(http: httpx.Client) -> None:
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").status_code == 200


def test_tokens_never_appear_in_log_or_error_bodies(
    auth_server: ServerProcess, http: httpx.Client, finished: str
) -> None:
    bodies = []
    for token in (UNKNOWN, READ, WRITE, ADMIN, FULL):
        for method, path in (
            ("GET", f"/stream/{finished}"),
            ("GET", "/stream/missing-one"),
            ("POST", f"/stream/{finished}"),
            ("DELETE", "/stream/missing-one"),
            ("PATCH", f"/stream/{finished}"),
            ("GET", "/stream/.bad?offset=x"),
        ):
            response = http.request(method, path, headers=bearer(token), content=b"")
            bodies.append(response.text)
    # A request with the token in a wrong place still does not get it echoed.
    bodies.append(http.get(f"/stream/{UNKNOWN}", headers=bearer(READ)).text)
    assert any('"error"' in body for body in bodies)
    everything = "\n".join(bodies)
    for token in (FULL, READ, WRITE, ADMIN):
        assert token not in everything
    assert f"Bearer {UNKNOWN}" not in everything
    marker = unique("last-request")
    http.get(f"/streams/{marker}", headers=bearer(FULL))
    # Requests are logged (so this check means something); wait for the last one.
    wait_until(lambda: marker in "".join(auth_server.log), what="the last request's log line")
    log = "".join(auth_server.log)
    for token in (FULL, READ, WRITE, ADMIN, UNKNOWN):
        assert token not in log.replace(f"/stream/{UNKNOWN}", "")


def test_open_server_on_non_loopback_address_warns_at_start(
    server_factory: Callable[..., ServerProcess],
) -> None:
    exposed = server_factory(host="0.0.0.0")
    assert any("no tokens configured" in line for line in exposed.log)


def test_server_with_tokens_on_non_loopback_address_does_not_warn(
    server_factory: Callable[..., ServerProcess],
) -> None:
    exposed = server_factory(host="0.0.0.0", tokens=[FULL])
    assert not any("no tokens configured" in line for line in exposed.log)
