"""Signed share links (SPEC §6)."""

from __future__ import annotations

import httpx
import pytest

from tests.server import ServerProcess

TOKENS = ["admin-secret", {"token": "reader-secret", "scopes": ["read"]}]


@pytest.fixture
def secured(server_factory) -> ServerProcess:  # type: ignore[no-untyped-def]
    server: ServerProcess = server_factory(tokens=TOKENS, signing_key="test-signing-key")
    with httpx.Client(base_url=server.url, headers={"Authorization": "Bearer admin-secret"}) as h:
        assert h.post("/stream/shared", content=b"shared bytes").status_code == 201
        assert h.post("/stream/other", content=b"other bytes").status_code == 201
    return server


def share(server: ServerProcess, stream_id: str, ttl: float = 60) -> dict[str, str]:
    response = httpx.post(
        f"{server.url}/streams/{stream_id}/share",
        json={"ttl": ttl},
        headers={"Authorization": "Bearer reader-secret"},
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_share_link_reads_its_stream_without_a_token(secured: ServerProcess) -> None:
    link = share(secured, "shared")
    assert link["url"].startswith("/stream/shared?expires=")
    assert link["viewer_url"].startswith("/ui/stream/shared?expires=")
    got = httpx.get(secured.url + link["url"])
    assert got.status_code == 200
    assert got.content == b"shared bytes"
    head = httpx.head(secured.url + link["url"])
    assert head.status_code == 200
    assert head.headers["upload-offset"] == "12"
    info = httpx.get(secured.url + link["url"].replace("/stream/", "/streams/", 1))
    assert info.json()["id"] == "shared"


def test_share_link_is_refused_for_another_stream_or_method(secured: ServerProcess) -> None:
    query = share(secured, "shared")["url"].split("?", 1)[1]
    other = httpx.get(f"{secured.url}/stream/other?{query}")
    assert other.status_code == 403
    assert set(other.json()) == {"error"}
    for method in ("DELETE", "PATCH", "POST"):
        response = httpx.request(method, f"{secured.url}/stream/shared?{query}")
        assert response.status_code == 403, method
    assert httpx.get(f"{secured.url}/streams?{query}").status_code == 403


def test_tampered_or_expired_share_link_is_403(secured: ServerProcess) -> None:
    url = share(secured, "shared")["url"]
    tampered = url[:-1] + ("0" if url[-1] != "0" else "1")
    assert httpx.get(secured.url + tampered).status_code == 403
    later = url.replace("expires=", "expires=9", 1)
    assert httpx.get(secured.url + later).status_code == 403
    expired = share(secured, "shared", ttl=0.001)["url"]
    response = httpx.get(secured.url + expired)
    assert response.status_code == 403
    assert "expired" in response.json()["error"]


def test_share_needs_a_read_token_and_an_existing_stream(secured: ServerProcess) -> None:
    assert httpx.post(f"{secured.url}/streams/shared/share", json={"ttl": 5}).status_code == 401
    missing = httpx.post(
        f"{secured.url}/streams/nope/share",
        json={"ttl": 5},
        headers={"Authorization": "Bearer reader-secret"},
    )
    assert missing.status_code == 404
    bad_ttl = httpx.post(
        f"{secured.url}/streams/shared/share",
        json={"ttl": -1},
        headers={"Authorization": "Bearer reader-secret"},
    )
    assert bad_ttl.status_code == 400


def test_share_links_survive_a_restart_without_a_configured_key(server: ServerProcess) -> None:
    httpx.post(f"{server.url}/stream/kept", content=b"k")
    url = httpx.post(f"{server.url}/streams/kept/share", json={"ttl": 60}).json()["url"]
    server.restart()
    assert httpx.get(server.url + url).content == b"k"
    assert "signature=REDACTED" in "".join(server.log) or "signature" not in "".join(server.log)
    signature = url.rsplit("signature=", 1)[1]
    assert signature not in "".join(server.log)
