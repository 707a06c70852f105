"""limits.total_bytes: the oldest finished streams make room; live ones never (issue 12)."""

from __future__ import annotations

import httpx

from tests.e2e.helpers import (
    assert_json_error,
    get_bytes,
    make_dropped_stream,
    wait_for,
    wait_until_resumable,
)
from tests.e2e.hook_receiver import Receiver
from tests.e2e.test_events import events
from tests.nats_env import NATS_URL, drop_streams, require_nats
from tests.pg import PG_URL, new_namespace, require_pg
from tests.server import ServerProcess

KiB = 1024
QUOTA = 300 * KiB
FAST_HOOKS = {"min_backoff": 0.05, "max_backoff": 0.3, "poll_interval": 0.2}


def body(size: int, seed: int) -> bytes:
    return bytes((seed + n) % 251 for n in range(size))


def evictions(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("weft_evictions_total "):
            return float(line.split()[1])
    raise AssertionError("weft_evictions_total is missing")


def refused(client: httpx.Client) -> bool:
    """A new stream gets 507; one that was still let in is deleted again."""
    response = client.post("/stream/probe", content=b"x")
    if response.status_code == 201:
        assert client.delete("/stream/probe").status_code in (204, 404)  # or evicted
        return False
    assert_json_error(response, 507)
    return True


def test_a_new_stream_evicts_the_stream_that_finished_first(
    server_factory,  # type: ignore[no-untyped-def]
) -> None:
    server: ServerProcess = server_factory(limits={"total_bytes": QUOTA})
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for n in (1, 2, 3):  # exactly the quota
            assert client.post(f"/stream/old-{n}", content=body(100 * KiB, n)).status_code == 201
        assert evictions(client) == 0
        with events(server) as sse:
            assert client.post("/stream/new", content=b"fresh").status_code == 201
            deleted = sse.next_event()
            assert deleted["event"] == "deleted" and '"id":"old-1"' in deleted["data"]
            assert sse.next_event()["event"] == "created"
        assert client.get("/stream/old-1").status_code == 404
        for n in (2, 3):
            assert client.get(f"/stream/old-{n}").content == body(100 * KiB, n)
        assert client.get("/stream/new").content == b"fresh"
        assert evictions(client) == 1
        # A producer crossing the quota evicts too, as many as it needs.
        assert client.post("/stream/big", content=body(250 * KiB, 4)).status_code == 201
        assert [client.get(f"/stream/old-{n}").status_code for n in (2, 3)] == [404, 404]
        assert evictions(client) == 3
    lines = [line for line in server.log if "stream_evicted" in line]
    assert len(lines) == 3
    assert "stream_evicted stream_id=old-1 size=102400" in lines[0]


def test_only_live_streams_left_new_streams_and_appends_get_507_and_nothing_changes(
    server_factory,  # type: ignore[no-untyped-def]
) -> None:
    server: ServerProcess = server_factory(limits={"total_bytes": QUOTA})
    first, second = body(200 * KiB, 1), body(100 * KiB, 2)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        make_dropped_stream(client, server.port, "live-1", first)
        make_dropped_stream(client, server.port, "live-2", second)
        wait_until_resumable(client, "live-1", len(first))
        message = assert_json_error(client.post("/stream/new", content=b"x"), 507)
        assert "limits.total_bytes" in message
        patch = client.patch(
            "/stream/live-1", headers={"Upload-Offset": str(len(first))}, content=b"more"
        )
        assert "limits.total_bytes" in assert_json_error(patch, 507)
        tus = client.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "5"})
        assert "limits.total_bytes" in assert_json_error(tus, 507)
        assert client.get("/stream/new").status_code == 404
        assert get_bytes(client, "live-1") == first
        assert get_bytes(client, "live-2") == second
        assert evictions(client) == 0
        # Completing a live stream (no bytes: not an append) makes it evictable.
        wait_until_resumable(client, "live-2", len(second))
        done = client.patch(
            "/stream/live-2",
            headers={"Upload-Offset": str(len(second)), "Upload-Complete": "?1"},
            content=b"",
        )
        assert done.status_code == 204, done.text
        assert client.post("/stream/new", content=b"x").status_code == 201
        assert client.get("/stream/live-2").status_code == 404
        assert get_bytes(client, "live-1") == first
        # The append that was refused fits now; the stream stays live.
        wait_for(
            lambda: (
                client.patch(
                    "/stream/live-1", headers={"Upload-Offset": str(len(first))}, content=b"more"
                ).status_code
                == 204
            ),
            "room for the append",
        )
        assert get_bytes(client, "live-1") == first + b"more"


def test_on_a_cluster_the_quota_counts_every_nodes_streams(
    server_factory,  # type: ignore[no-untyped-def]
) -> None:
    require_pg()
    require_nats()
    namespace = new_namespace()
    shared = {
        "database_url": PG_URL,
        "tail_url": NATS_URL,
        "namespace": namespace,
        "limits": {"total_bytes": QUOTA},
    }
    try:
        a, b = (server_factory(node_id=name, **shared) for name in ("node-a", "node-b"))
        with (
            httpx.Client(base_url=a.url, timeout=10) as on_a,
            httpx.Client(base_url=b.url, timeout=10) as on_b,
        ):
            make_dropped_stream(on_a, a.port, "live-a", body(200 * KiB, 1))
            assert on_b.post("/stream/done-b", content=body(100 * KiB, 2)).status_code == 201
            # Node b holds 100 KiB itself, but the database's total is the quota:
            # a new stream evicts done-b, at once or at node b's next round.
            assert on_b.post("/stream/new", content=b"x").status_code == 201
            wait_for(lambda: on_a.get("/streams/done-b").status_code == 404, "the eviction")
            assert evictions(on_a) + evictions(on_b) == 1  # whichever node came first
            assert on_a.get("/stream/live-a?notail").content == body(200 * KiB, 1)
            assert on_a.delete("/stream/new").status_code == 204
            make_dropped_stream(on_a, a.port, "live-a2", body(100 * KiB, 3))
            # Node a's checkpoint (every second) brings its live size to the database.
            wait_for(
                lambda: on_b.get("/streams/live-a2").json()["size"] == 100 * KiB,
                "node a's checkpoint",
            )
            # Node b sees it at its next round (each node reads the total every second).
            wait_for(lambda: refused(on_b), "node b to refuse a new stream")
            assert on_a.get("/streams/probe").status_code == 404
            assert on_a.get("/stream/live-a2?notail").content == body(100 * KiB, 3)
    finally:
        drop_streams(f"{namespace}_events")


def test_an_eviction_is_reported_by_the_post_delete_webhook(
    server_factory,  # type: ignore[no-untyped-def]
) -> None:
    receiver = Receiver().listen()
    try:
        hooks = [{"url": receiver.url, "events": ["post-delete"], "secret": "s", "timeout": 2}]
        server: ServerProcess = server_factory(
            limits={"total_bytes": QUOTA}, hooks=hooks, hook_delivery=FAST_HOOKS
        )
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.post("/stream/old", content=body(QUOTA, 1)).status_code == 201
            assert client.post("/stream/new", content=b"x").status_code == 201
        calls = receiver.wait_for(lambda calls: len(calls) >= 1)
        assert receiver.delivered(calls) == [("post-delete", "old")]
    finally:
        receiver.close()
