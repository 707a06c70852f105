"""tusd's lock exchange (SPEC §12.2, issue 11): a resume through any node ends
a producer whose connection went silent (half-open) instead of waiting out its
lease forever; a producer that is sending keeps its stream (409)."""

from __future__ import annotations

import os
import socket
import threading
import time

import httpx

from tests.cluster.conftest import SEG, Cluster
from tests.cluster.readers import Follower
from tests.e2e.helpers import RawConnection, request_head, sha256_hex, unique_id
from tests.e2e.test_spy import RawProducer

HANDOFF_IDLE = 2.0  # the default handoff_idle


def _resume(url: str, stream_id: str, data: bytes) -> tuple[int, httpx.Response]:
    """HEAD for the offset, then PATCH the rest and complete: what a client does."""
    head = httpx.head(f"{url}/stream/{stream_id}", timeout=10)
    offset = int(head.headers["upload-offset"])
    patch = httpx.patch(
        f"{url}/stream/{stream_id}",
        headers={"Upload-Offset": str(offset), "Upload-Complete": "?1"},
        content=data,
        timeout=30,
    )
    return offset, patch


def _old_response(producer: RawProducer) -> bytes:
    """What the server still sends the half-open producer's connection."""
    sock: socket.socket = producer._sock
    sock.settimeout(10)
    got = b""
    try:
        while data := sock.recv(65536):
            got += data
    except OSError:
        pass
    return got


def test_a_resume_through_b_takes_over_from_a_half_open_producer_on_a(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    stream_id = unique_id("halfopen")
    first = bytes(range(256)) * 40  # 10 KiB
    rest = b"resumed through b\n" * 500
    with RawProducer(a.port, stream_id) as producer:
        assert producer.status == 201
        producer.send(first)
        Follower(b.url, stream_id).wait_for_size(len(first))
        # The connection is never closed: A still believes its producer is attached.
        time.sleep(HANDOFF_IDLE + 0.5)
        started = time.monotonic()
        offset, patch = _resume(b.url, stream_id, rest)
        took = time.monotonic() - started
        assert offset == len(first)
        assert patch.status_code == 204, patch.text
        assert patch.headers["upload-offset"] == str(len(first) + len(rest))
        assert took < 8, took
        print(f"handoff_patch_seconds={took:.3f}")
        # The old request was ended with an error body (its 201 was sent long ago).
        assert b"Another request resumed" in _old_response(producer)
    expected = first + rest
    for node in (a, b, c):
        info = httpx.get(f"{node.url}/streams/{stream_id}", timeout=10).json()
        assert (info["state"], info["size"]) == ("complete", len(expected))
        assert info["sha256"] == sha256_hex(expected)
        assert httpx.get(f"{node.url}/stream/{stream_id}", timeout=30).content == expected


def test_an_active_producer_on_a_keeps_its_stream_b_gets_409(cluster: Cluster) -> None:
    a, b, _ = cluster.nodes
    stream_id = unique_id("active")
    sent = bytearray()
    stop = threading.Event()
    with RawProducer(a.port, stream_id) as producer:

        def feed() -> None:
            while not stop.is_set():
                chunk = b"line %d\n" % len(sent)
                producer.send(chunk)
                sent.extend(chunk)
                time.sleep(0.1)  # well under handoff_idle

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            Follower(b.url, stream_id).wait_for_size(100)
            time.sleep(HANDOFF_IDLE + 0.5)  # active for longer than handoff_idle
            offset, patch = _resume(b.url, stream_id, b"intruder")
            assert patch.status_code == 409, patch.text
            assert "already has a producer" in patch.json()["error"]
        finally:
            stop.set()
            feeder.join()
        result = producer.finish()
    assert (result["state"], result["size"]) == ("complete", len(sent))
    assert httpx.get(f"{b.url}/stream/{stream_id}", timeout=30).content == bytes(sent)


def test_a_tus_resume_through_b_takes_over_from_a_silent_tus_patch_on_a(cluster: Cluster) -> None:
    a, b, _ = cluster.nodes
    tus = {"Tus-Resumable": "1.0.0"}
    octets = {**tus, "Content-Type": "application/offset+octet-stream"}
    total = 4000
    created = httpx.post(f"{a.url}/files/", headers={**tus, "Upload-Length": str(total)})
    upload = created.headers["location"].rsplit("/", 1)[-1]
    old = RawConnection(a.port)
    headers = {**octets, "Upload-Offset": "0", "Content-Length": str(total)}
    old.send(request_head("PATCH", f"/files/{upload}", headers))
    old.send(b"x" * 1500)  # then silent: the rest never comes, the socket stays open
    try:
        Follower(b.url, upload).wait_for_size(1500)
        time.sleep(HANDOFF_IDLE + 0.5)
        head = httpx.head(f"{b.url}/files/{upload}", headers=tus, timeout=10)
        assert head.headers["upload-offset"] == "1500"
        patch = httpx.patch(
            f"{b.url}/files/{upload}",
            headers={**octets, "Upload-Offset": "1500"},
            content=b"y" * 2500,
            timeout=30,
        )
        assert patch.status_code == 204, patch.text
        assert old.read_head().status == 423  # tus clients know 423: locked
    finally:
        old.close()
    expected = b"x" * 1500 + b"y" * 2500
    for node in (a, b):
        assert httpx.get(f"{node.url}/stream/{upload}", timeout=30).content == expected


def test_a_stream_handed_from_a_to_b_and_back_is_byte_exact_everywhere(cluster: Cluster) -> None:
    """A lets go, B seals and uploads a segment, A takes the stream back: A must
    not serve or finish its outgrown local copy."""
    a, b, _ = cluster.nodes
    stream_id = unique_id("pingpong")
    first, second, last = os.urandom(1024 * 1024), os.urandom(SEG), b"the end\n"
    with RawProducer(a.port, stream_id) as producer:
        producer.send(first)
        Follower(b.url, stream_id).wait_for_size(len(first))
        time.sleep(HANDOFF_IDLE + 0.5)
        on_b = RawConnection(b.port)
        try:
            # A PATCH through B that promises more than it sends, then goes silent.
            headers = {"Upload-Offset": str(len(first)), "Content-Length": str(2 * SEG)}
            on_b.send(request_head("PATCH", f"/stream/{stream_id}", headers))
            on_b.send(second)
            end = len(first) + len(second)
            Follower(a.url, stream_id, offset=end - 1).wait_for_size(1)
            time.sleep(HANDOFF_IDLE + 0.5)
            offset, patch = _resume(a.url, stream_id, last)
            assert (offset, patch.status_code) == (end, 204), patch.text
        finally:
            on_b.close()
    expected = first + second + last
    for node in (a, b):
        got = httpx.get(f"{node.url}/stream/{stream_id}", timeout=60)
        assert got.content == expected, (node.url, len(got.content))
