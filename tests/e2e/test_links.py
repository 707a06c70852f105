"""Links: PUT /links/{name} points a name at a stream; GET redirects to it (issue 12)."""

from __future__ import annotations

import httpx

from tests.server import ServerProcess

TOKENS = [
    "admin-secret",
    {"token": "writer-secret", "scopes": ["write"]},
    {"token": "reader-secret", "scopes": ["read"]},
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_put_creates_then_repoints_and_get_redirects_with_the_query_kept(
    client: httpx.Client,
) -> None:
    assert client.post("/stream/build-1", content=b"first log").status_code == 201
    assert client.post("/stream/build-2", content=b"second log").status_code == 201
    created = client.put("/links/main-latest", json={"stream": "build-1"})
    assert created.status_code == 201
    assert created.json()["name"] == "main-latest" and created.json()["stream"] == "build-1"
    moved = client.put("/links/main-latest", json={"stream": "build-2"})
    assert moved.status_code == 200
    assert moved.json()["stream"] == "build-2"
    assert moved.json()["created_at"] == created.json()["created_at"]

    redirect = client.get("/links/main-latest?notail&offset=7")
    assert redirect.status_code == 307
    assert redirect.headers["location"] == "/stream/build-2?notail&offset=7"
    head = client.head("/links/main-latest")
    assert head.status_code == 307 and head.headers["location"] == "/stream/build-2"
    followed = client.get("/links/main-latest?offset=7", follow_redirects=True)
    assert followed.status_code == 200 and followed.content == b"log"


def test_link_to_a_deleted_stream_is_404_until_the_id_exists_again(client: httpx.Client) -> None:
    client.post("/stream/job", content=b"one")
    client.put("/links/job-latest", json={"stream": "job"})
    assert client.delete("/stream/job").status_code == 204
    gone = client.get("/links/job-latest")
    assert gone.status_code == 404
    assert gone.json() == {
        "error": "The link job-latest points at stream job, which does not exist."
    }
    assert client.head("/links/job-latest").status_code == 404
    # The link names the id: a stream created again under it is followed.
    client.post("/stream/job", content=b"two")
    assert client.get("/links/job-latest").headers["location"] == "/stream/job"


def test_list_filters_by_stream_and_pages_by_name(client: httpx.Client) -> None:
    client.post("/stream/s1", content=b"a")
    client.post("/stream/s2", content=b"b")
    for name, stream_id in [("c", "s1"), ("a", "s2"), ("b", "s1")]:
        assert client.put(f"/links/{name}", json={"stream": stream_id}).status_code == 201
    listed = client.get("/links").json()
    assert [(link["name"], link["stream"]) for link in listed["links"]] == [
        ("a", "s2"),
        ("b", "s1"),
        ("c", "s1"),
    ]
    assert listed["next"] is None
    first = client.get("/links?stream=s1&limit=1").json()
    assert [link["name"] for link in first["links"]] == ["b"] and first["next"] == "b"
    rest = client.get(f"/links?stream=s1&limit=1&cursor={first['next']}").json()
    assert [link["name"] for link in rest["links"]] == ["c"]
    assert client.get("/links?limit=0").status_code == 400
    assert client.get("/links?stream=.bad").status_code == 400


def test_delete_removes_the_link_and_leaves_the_stream(client: httpx.Client) -> None:
    client.post("/stream/kept", content=b"bytes")
    client.put("/links/l", json={"stream": "kept"})
    assert client.delete("/links/l").status_code == 204
    missing = client.get("/links/l")
    assert missing.status_code == 404
    assert missing.json() == {"error": "The link l does not exist."}
    assert client.delete("/links/l").status_code == 404
    assert client.get("/stream/kept").content == b"bytes"


def test_bad_puts_are_clear_json_errors(client: httpx.Client) -> None:
    client.post("/stream/there", content=b"x")
    cases = [
        ("/links/ok", {"content": b"{not json"}, 400, "not valid JSON"),
        ("/links/ok", {"json": {"stream": 5}}, 400, '{"stream": "<stream id>"}'),
        ("/links/ok", {"json": ["there"]}, 400, '{"stream": "<stream id>"}'),
        ("/links/ok", {"json": {"stream": "bad/id"}}, 400, "A stream ID is"),
        ("/links/.hidden", {"json": {"stream": "there"}}, 400, "A link name is"),
        ("/links/ok", {"json": {"stream": "missing"}}, 404, "missing does not exist"),
        ("/links/ok", {"content": b" " * 5000}, 413, "at most 4096 bytes"),
    ]
    for path, body, status, words in cases:
        response = client.put(path, **body)  # type: ignore[arg-type]
        assert response.status_code == status, (path, body, response.text)
        assert set(response.json()) == {"error"} and words in response.json()["error"]
    assert client.get("/links/ok").status_code == 404


def test_links_need_write_to_put_read_to_follow_and_admin_to_delete(
    server_factory,  # type: ignore[no-untyped-def]
) -> None:
    server: ServerProcess = server_factory(tokens=TOKENS)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        http.post("/stream/s", content=b"x", headers=bearer("admin-secret"))
        body = {"stream": "s"}
        assert http.put("/links/l", json=body).status_code == 401
        assert http.put("/links/l", json=body, headers=bearer("reader-secret")).status_code == 403
        assert http.put("/links/l", json=body, headers=bearer("writer-secret")).status_code == 201
        assert http.get("/links/l").status_code == 401
        assert http.get("/links", headers=bearer("writer-secret")).status_code == 403
        assert http.get("/links/l", headers=bearer("reader-secret")).status_code == 307
        assert http.get("/links", headers=bearer("reader-secret")).status_code == 200
        assert http.delete("/links/l", headers=bearer("writer-secret")).status_code == 403
        assert http.delete("/links/l", headers=bearer("admin-secret")).status_code == 204
