"""Crash recovery and abandonment (SPEC §1, §4): faults injected for real."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Callable

import httpx

from tests.e2e.helpers import (
    RawConnection,
    open_producer,
    upload_offset,
    wait_for,
    wait_for_offset,
)
from tests.server import ServerProcess


def open_chunked_producer(port: int, stream_id: str) -> RawConnection:
    conn, head = open_producer(port, f"/stream/{stream_id}")
    assert head.status == 201, head
    return conn


def stored(http: httpx.Client, stream_id: str) -> int:
    offset = upload_offset(http, stream_id)
    assert offset is not None, f"{stream_id} does not exist"
    return offset


def test_twenty_producers_survive_kill_9_and_resume_byte_identical(server: ServerProcess) -> None:
    rng = random.Random(7)
    inputs = {f"crash-{n}": os.urandom(rng.randrange(200_000, 400_000)) for n in range(20)}
    acknowledged = dict.fromkeys(inputs, 0)
    sent = dict.fromkeys(inputs, 0)
    stop = threading.Event()
    killed = threading.Event()

    def produce(stream_id: str) -> None:
        data = inputs[stream_id]
        chunk_rng = random.Random(stream_id)
        with httpx.Client(base_url=server.url, timeout=5) as http:
            sock = open_chunked_producer(server.port, stream_id)
            try:
                # Send until the kill, but never the whole input: it must stay live.
                while not stop.is_set() and sent[stream_id] < len(data) // 2:
                    piece = data[sent[stream_id] : sent[stream_id] + chunk_rng.randrange(1, 9000)]
                    sock.send_chunk(piece)
                    sent[stream_id] += len(piece)
                    acknowledged[stream_id] = stored(http, stream_id)
            except (OSError, httpx.HTTPError):
                assert killed.is_set(), "connection failed before the kill"
            finally:
                sock.close()

    threads = [threading.Thread(target=produce, args=(sid,)) for sid in inputs]
    for thread in threads:
        thread.start()
    with httpx.Client(base_url=server.url, timeout=5) as http:
        wait_for(lambda: all(v > 0 for v in acknowledged.values()), "every producer acknowledged")
    killed.set()
    server.kill()
    stop.set()
    for thread in threads:
        thread.join(20)
    server.start()

    with httpx.Client(base_url=server.url, timeout=10) as http:
        for stream_id, data in inputs.items():
            offset = stored(http, stream_id)
            assert acknowledged[stream_id] <= offset <= sent[stream_id]
            state = http.get(f"/streams/{stream_id}").json()["state"]
            assert state == "live"
            resumed = http.patch(
                f"/stream/{stream_id}",
                content=data[offset:],
                headers={"Upload-Offset": str(offset), "Upload-Complete": "?1"},
            )
            assert resumed.status_code == 204, resumed.text
            assert resumed.headers["upload-offset"] == str(len(data))
            info = http.get(f"/streams/{stream_id}").json()
            assert info["state"] == "complete"
            assert info["sha256"] == hashlib.sha256(data).hexdigest()
            assert http.get(f"/stream/{stream_id}").content == data


def test_recovered_stream_recomputes_digest_from_segments(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(segment_bytes=4096)
    data = os.urandom(50_000)
    sock = open_chunked_producer(server.port, "recover-me")
    sock.send_chunk(data[:30_000])
    with httpx.Client(base_url=server.url, timeout=10) as http:
        wait_for_offset(http, "recover-me", 30_000)
    server.kill()
    sock.close()
    server.start()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert stored(http, "recover-me") == 30_000
        response = http.patch(
            "/stream/recover-me",
            content=data[30_000:],
            headers={"Upload-Offset": "30000", "Upload-Complete": "?1"},
        )
        assert response.status_code == 204
        info = http.get("/streams/recover-me").json()
        assert info["sha256"] == hashlib.sha256(data).hexdigest()
        assert info["size"] == 50_000


def test_dropped_producer_stream_is_abandoned_and_its_reader_ends(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(abandon_after=1)
    sock = open_chunked_producer(server.port, "dropped")
    sock.send_chunk(b"partial line")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        wait_for_offset(http, "dropped", 12)
        with http.stream("GET", "/stream/dropped") as reader:
            sock.close()
            body = b"".join(reader.iter_bytes())
        assert body == b"partial line"
        info = http.get("/streams/dropped").json()
        assert info["state"] == "abandoned"
        assert info["sha256"] == hashlib.sha256(b"partial line").hexdigest()
        refused = http.patch("/stream/dropped", content=b"x", headers={"Upload-Offset": "12"})
        assert refused.status_code == 409
        assert http.get("/stream/dropped").content == b"partial line"


def test_connected_silent_producer_is_never_abandoned(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(abandon_after=0.5)
    sock = open_chunked_producer(server.port, "compiling")
    try:
        sock.send_chunk(b"step 1\n")
        with httpx.Client(base_url=server.url, timeout=10) as http:
            # Three abandon periods of silence while the producer stays connected.
            with http.stream("GET", "/stream/compiling?offset=7") as reader:
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline:
                    assert http.get("/streams/compiling").json()["state"] == "live"
                    time.sleep(0.1)
                sock.send_chunk(b"step 2\n")
                sock.end_chunks()
                assert b"".join(reader.iter_bytes()) == b"step 2\n"
            assert http.get("/streams/compiling").json()["state"] == "complete"
    finally:
        sock.close()


def test_live_stream_recovered_after_restart_is_abandoned_later(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(abandon_after=1)
    sock = open_chunked_producer(server.port, "orphan")
    sock.send_chunk(b"abc")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        wait_for_offset(http, "orphan", 3)
    server.kill()
    sock.close()
    server.start()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/streams/orphan").json()["state"] == "live"
        wait_for(lambda: http.get("/streams/orphan").json()["state"] == "abandoned", "abandonment")
        assert http.get("/stream/orphan").content == b"abc"
