"""GET /streams: filters, ordering and cursor pagination (SPEC §5)."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.server import ServerProcess


def create(http: httpx.Client, stream_id: str, metadata: str = "{}", body: bytes = b"x") -> None:
    response = http.post(
        f"/stream/{stream_id}", content=body, headers={"X-Stream-Metadata": metadata}
    )
    assert response.status_code == 201, response.text


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["streams"]]


def test_listing_is_newest_first_with_full_info(client: httpx.Client) -> None:
    for name in ("a1", "a2", "a3"):
        create(client, name, '{"team": "core"}')
    body = client.get("/streams").json()
    assert [s["id"] for s in body["streams"]] == ["a3", "a2", "a1"]
    assert body["next"] is None
    first = body["streams"][0]
    assert set(first) == {
        "id",
        "metadata",
        "state",
        "size",
        "sha256",
        "created_at",
        "updated_at",
        "finished_at",
    }
    assert first["metadata"] == {"team": "core"}
    assert first["state"] == "complete"
    assert first["size"] == 1


def test_listing_filters_by_state_prefix_and_metadata(client: httpx.Client) -> None:
    create(client, "build-7-unit", '{"build": 7, "os": "linux"}')
    create(client, "build-7-lint", '{"build": "7", "os": "mac"}')
    create(client, "build-8-unit", '{"build": 8, "os": "linux"}')
    create(client, "other_x", '{"flag": true}')
    assert ids(client.get("/streams", params={"meta.build": "7"})) == [
        "build-7-lint",
        "build-7-unit",
    ]
    assert ids(client.get("/streams", params=[("meta.build", "7"), ("meta.os", "linux")])) == [
        "build-7-unit"
    ]
    assert ids(client.get("/streams", params={"meta.flag": "true"})) == ["other_x"]
    assert ids(client.get("/streams", params={"prefix": "build-7-"})) == [
        "build-7-lint",
        "build-7-unit",
    ]
    # "_" is not a wildcard in a prefix.
    assert ids(client.get("/streams", params={"prefix": "other_"})) == ["other_x"]
    assert ids(client.get("/streams", params={"prefix": "other%"})) == []
    assert ids(client.get("/streams", params={"state": "live"})) == []
    assert len(ids(client.get("/streams", params={"state": "complete"}))) == 4


def test_live_stream_is_listed_live_with_its_current_size(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        gate = threading.Event()

        def body():  # type: ignore[no-untyped-def]
            yield b"12345"
            gate.wait(10)

        producer = threading.Thread(
            target=lambda: httpx.post(f"{server.url}/stream/growing", content=body(), timeout=10)
        )
        producer.start()
        try:
            for _ in range(200):
                listed = http.get("/streams", params={"state": "live"}).json()["streams"]
                if listed and listed[0]["size"] == 5:
                    break
                threading.Event().wait(0.02)
            assert [(s["id"], s["state"], s["size"]) for s in listed] == [("growing", "live", 5)]
            assert listed[0]["sha256"] is None
        finally:
            gate.set()
            producer.join(10)


def test_cursor_pages_visit_every_stream_once_while_streams_are_created(
    client: httpx.Client,
) -> None:
    for n in range(25):
        create(client, f"p{n:02d}")
    seen: list[str] = []
    cursor = None
    extra = 0
    while True:
        params = {"limit": "7"} | ({"cursor": cursor} if cursor else {})
        body = client.get("/streams", params=params).json()
        seen += [item["id"] for item in body["streams"]]
        # New streams arrive between pages; they are newer than the cursor.
        create(client, f"new{extra}")
        extra += 1
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == [f"p{n:02d}" for n in reversed(range(25))]


@pytest.mark.parametrize(
    "params",
    [
        {"state": "finished"},
        {"limit": "ten"},
        {"limit": "0"},
        {"limit": "1001"},
        {"cursor": "not-a-cursor"},
        {"cursor": "WzEsMl0"},  # valid base64 and JSON, wrong shape
    ],
)
def test_bad_listing_parameters_are_400(client: httpx.Client, params: dict[str, str]) -> None:
    response = client.get("/streams", params=params)
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
