"""Any node serves any stream (SPEC §12.2), on PostgreSQL, S3 and NATS JetStream."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from tests.cluster.conftest import SEG, Cluster
from tests.cluster.readers import Follower
from tests.e2e.helpers import sha256_hex, unique_id, wait_for
from tests.e2e.test_events import events
from tests.e2e.test_spy import RawProducer, SpyClient


@pytest.mark.timeout(180)  # three nodes and their engines on a shared 2-core machine
def test_written_through_a_tailed_live_byte_exact_on_b_and_c(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    stream_id = unique_id("tail")
    data = os.urandom(2 * SEG + 12345)  # crosses two segment boundaries: S3, then the tail
    with RawProducer(a.port, stream_id) as producer:
        assert producer.status == 201
        producer.send(b"first line\n")
        readers = [Follower(node.url, stream_id) for node in (b, c)]
        for reader in readers:  # live: the first bytes arrive before any more are sent
            reader.wait_for_size(11)
        for start in range(0, len(data), 256 * 1024):
            producer.send(data[start : start + 256 * 1024])
        result = producer.finish()
    expected = b"first line\n" + data
    assert (result["size"], result["sha256"]) == (len(expected), sha256_hex(expected))
    for reader in readers:
        got = reader.wait()
        assert reader.status == 200 and reader.error is None
        assert got == expected
    # A finished stream replays from any node, the one that wrote it too.
    for node in (a, b, c):
        assert httpx.get(f"{node.url}/stream/{stream_id}", timeout=30).content == expected


@pytest.mark.timeout(180)  # three nodes and their engines on a shared 2-core machine
def test_lists_events_spy_and_viewer_on_c_show_a_stream_made_on_a(cluster: Cluster) -> None:
    a, _, c = cluster.nodes
    stream_id = unique_id("seen")
    with events(c) as on_c, SpyClient(c.port, "?color") as spy:
        with RawProducer(a.port, stream_id, metadata={"job": "cluster"}) as producer:
            producer.send(b"hello from a\n")
            created = on_c.next_event()
            assert (created["event"], json.loads(created["data"])["id"]) == ("created", stream_id)
            listed = httpx.get(f"{c.url}/streams", params={"state": "live"}, timeout=10).json()
            assert stream_id in [s["id"] for s in listed["streams"]]
            spy.wait_for(lambda lines: "hello from a" in lines, timeout=15)
            viewer = httpx.get(f"{c.url}/ui/stream/{stream_id}", timeout=10)
            assert viewer.status_code == 200
            producer.finish()
        completed = on_c.next_event()
        assert completed["event"] == "completed"


@pytest.mark.timeout(180)  # three nodes and their engines on a shared 2-core machine
def test_delete_through_b_ends_readers_on_a_and_c(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    stream_id = unique_id("gone")
    with RawProducer(a.port, stream_id) as producer:
        producer.send(b"x" * 1000)
        readers = [Follower(node.url, stream_id) for node in (a, c)]
        for reader in readers:
            reader.wait_for_size(1000)
        assert httpx.delete(f"{b.url}/stream/{stream_id}", timeout=10).status_code == 204
        for reader in readers:
            reader.wait(timeout=15)  # ended, not left hanging
        for node in (a, b, c):
            assert httpx.get(f"{node.url}/stream/{stream_id}", timeout=10).status_code == 404


@pytest.mark.timeout(180)  # three nodes and their engines on a shared 2-core machine
def test_force_on_c_replaces_the_stream_everywhere(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    stream_id = unique_id("again")
    with RawProducer(a.port, stream_id) as old:
        old.send(b"old bytes\n")
        readers = [Follower(node.url, stream_id) for node in (a, b)]
        for reader in readers:
            reader.wait_for_size(10)
        replaced = httpx.post(
            f"{c.url}/stream/{stream_id}", params={"force": "true"}, content=b"new", timeout=10
        )
        assert replaced.status_code == 201
        assert replaced.headers.get("x-stream-replaced") == "true"
        for reader in readers:
            assert reader.wait(timeout=15) == b"old bytes\n"
    for node in (a, b, c):
        assert httpx.get(f"{node.url}/stream/{stream_id}", timeout=10).content == b"new"


@pytest.mark.timeout(180)  # three nodes and their engines on a shared 2-core machine
def test_a_second_producer_on_b_gets_409(cluster: Cluster) -> None:
    a, b, _ = cluster.nodes
    stream_id = unique_id("one")
    with RawProducer(a.port, stream_id) as producer:
        producer.send(b"12345")
        # Node B tells the size the stream has on A, though A holds it.
        wait_for(
            lambda: (
                httpx.head(f"{b.url}/stream/{stream_id}", timeout=10).headers.get("upload-offset")
                == "5"
            ),
            "B to report A's size",
        )
        second = httpx.patch(
            f"{b.url}/stream/{stream_id}",
            headers={"Upload-Offset": "5", "Content-Type": "application/offset+octet-stream"},
            content=b"678",
            timeout=10,
        )
        assert second.status_code == 409, second.text
        assert producer.finish()["size"] == 5
