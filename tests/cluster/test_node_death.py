"""A node dies, nothing stops; a node that lost its lease can never append
again (SPEC §12.2)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.client import StreamWriter
from app.client.common import Backoff
from tests.cluster.balancer import Balancer
from tests.cluster.conftest import LEASE_TTL, Cluster
from tests.cluster.readers import Follower
from tests.e2e.helpers import sha256_hex, unique_id
from tests.e2e.test_spy import RawProducer

ROOT = Path(__file__).resolve().parents[2]
PRODUCERS = 10
CHUNK = 64 * 1024


def _feed(writer: StreamWriter, data: bytes, halfway: threading.Event) -> None:
    for start in range(0, len(data), CHUNK):
        writer.write(data[start : start + CHUNK])
        if start >= len(data) // 2:
            halfway.set()
        time.sleep(0.005)  # a producer that takes a while, so the kill lands mid-stream


@pytest.mark.timeout(300)  # three nodes and their engines on a shared 2-core machine
def test_kill_9_of_the_node_producers_write_through_loses_nothing(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    # Every connection goes to the first node alive: A until it dies, then B.
    front = Balancer(lambda: cluster.alive()[:1])
    inputs = {unique_id(f"p{i}"): os.urandom(3 * 1024 * 1024 + i) for i in range(PRODUCERS)}
    ids = list(inputs)
    halfway = {stream_id: threading.Event() for stream_id in ids}
    # Quick retries, as many as the defaults: what a default client does, sooner.
    backoff = Backoff(min_delay=0.2, max_delay=2.0)
    writers = {sid: StreamWriter(front.url, sid, backoff=backoff).start() for sid in ids[:-1]}
    feeders = [
        threading.Thread(target=_feed, args=(writers[sid], inputs[sid], halfway[sid]))
        for sid in writers
    ]
    # The last producer is bin/stream reading a pipe.
    piped = subprocess.Popen(
        [sys.executable, str(ROOT / "bin" / "stream"), front.url, ids[-1]],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    for feeder in feeders:
        feeder.start()
    for sid in writers:
        writers[sid].wait_created(30)
    readers = {sid: [Follower(node.url, sid) for node in (b, c)] for sid in ids[:-1]}
    on_a = Follower(a.url, ids[0])
    assert piped.stdin is not None
    piped.stdin.write(inputs[ids[-1]][: len(inputs[ids[-1]]) // 2])
    piped.stdin.flush()
    for sid in ids[:-1]:
        assert halfway[sid].wait(60)
    on_a.wait_for_size(1)

    a.kill()
    shutil.rmtree(a.workdir / "data")

    piped.stdin.write(inputs[ids[-1]][len(inputs[ids[-1]]) // 2 :])
    piped.stdin.close()
    for feeder in feeders:
        feeder.join(120)
    results = {sid: writer.close() for sid, writer in writers.items()}
    assert piped.stderr is not None
    with piped.stderr:
        assert piped.wait(120) == 0, piped.stderr.read()
    for sid, result in results.items():
        assert (result.state, result.size) == ("complete", len(inputs[sid]))
        assert result.sha256 == sha256_hex(inputs[sid])
        for reader in readers[sid]:
            assert reader.wait(60) == inputs[sid]
    # The reader that was on A reconnects elsewhere from where it stopped.
    got = on_a.wait(10)
    rest = httpx.get(f"{b.url}/stream/{ids[0]}", params={"offset": len(got)}, timeout=30)
    assert got + rest.content == inputs[ids[0]]
    for sid in ids:
        for node in (b, c):
            assert httpx.get(f"{node.url}/stream/{sid}", timeout=60).content == inputs[sid]
    front.close()


@pytest.mark.timeout(300)  # three nodes and their engines on a shared 2-core machine
def test_a_frozen_node_whose_producer_resumed_elsewhere_cannot_append(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    stream_id = unique_id("fenced")
    with RawProducer(a.port, stream_id) as producer:
        producer.send(b"a" * 1000)
        Follower(b.url, stream_id).wait_for_size(1000)
        assert a.proc is not None
        a.proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(LEASE_TTL * 1.5)
            # The producer comes back through B: it takes the lease over.
            deadline = time.monotonic() + 30
            while True:
                head = httpx.head(f"{b.url}/stream/{stream_id}", timeout=10)
                offset = head.headers.get("upload-offset")
                patch = httpx.patch(
                    f"{b.url}/stream/{stream_id}",
                    headers={"Upload-Offset": offset or "1000"},
                    content=b"b" * 500,
                    timeout=10,
                )
                if patch.status_code == 204 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert (offset, patch.status_code) == ("1000", 204), patch.text
            # Meanwhile the old connection's bytes wait in the frozen node's socket.
            producer.send(b"LATE" * 256)
        finally:
            a.proc.send_signal(signal.SIGCONT)
        time.sleep(1.0)  # the thawed node handles what it had queued
        done = httpx.patch(
            f"{b.url}/stream/{stream_id}",
            headers={"Upload-Offset": "1500", "Upload-Complete": "?1"},
            content=b"",
            timeout=10,
        )
        assert done.status_code == 204, done.text
    expected = b"a" * 1000 + b"b" * 500
    for node in (a, b, c):
        assert httpx.get(f"{node.url}/stream/{stream_id}", timeout=30).content == expected
