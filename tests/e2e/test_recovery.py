"""Crash recovery and abandonment (SPEC §1, §4): faults injected for real."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Callable

import httpx

from tests.server import ServerProcess

DEADLINE = 20.0


def open_chunked_producer(port: int, stream_id: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"POST /stream/{stream_id} HTTP/1.1\r\nHost: t\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        assert data, "server closed before answering"
        head += data
    assert head.startswith(b"HTTP/1.1 201"), head
    return sock


def send_chunk(sock: socket.socket, data: bytes) -> None:
    sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")


def upload_offset(http: httpx.Client, stream_id: str) -> int:
    response = http.head(f"/stream/{stream_id}")
    assert response.status_code == 200, response
    return int(response.headers["upload-offset"])


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


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
                    send_chunk(sock, piece)
                    sent[stream_id] += len(piece)
                    acknowledged[stream_id] = upload_offset(http, stream_id)
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
        thread.join(DEADLINE)
    server.start()

    with httpx.Client(base_url=server.url, timeout=10) as http:
        for stream_id, data in inputs.items():
            offset = upload_offset(http, stream_id)
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
    send_chunk(sock, data[:30_000])
    with httpx.Client(base_url=server.url, timeout=10) as http:
        wait_for(lambda: upload_offset(http, "recover-me") == 30_000, "30000 bytes stored")
    server.kill()
    sock.close()
    server.start()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert upload_offset(http, "recover-me") == 30_000
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
    send_chunk(sock, b"partial line")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        wait_for(lambda: upload_offset(http, "dropped") == 12, "bytes stored")
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
        send_chunk(sock, b"step 1\n")
        with httpx.Client(base_url=server.url, timeout=10) as http:
            # Three abandon periods of silence while the producer stays connected.
            with http.stream("GET", "/stream/compiling?offset=7") as reader:
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline:
                    assert http.get("/streams/compiling").json()["state"] == "live"
                    time.sleep(0.1)
                send_chunk(sock, b"step 2\n")
                sock.sendall(b"0\r\n\r\n")
                assert b"".join(reader.iter_bytes()) == b"step 2\n"
            assert http.get("/streams/compiling").json()["state"] == "complete"
    finally:
        sock.close()


def test_live_stream_recovered_after_restart_is_abandoned_later(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(abandon_after=1)
    sock = open_chunked_producer(server.port, "orphan")
    send_chunk(sock, b"abc")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        wait_for(lambda: upload_offset(http, "orphan") == 3, "bytes stored")
    server.kill()
    sock.close()
    server.start()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/streams/orphan").json()["state"] == "live"
        wait_for(lambda: http.get("/streams/orphan").json()["state"] == "abandoned", "abandonment")
        assert http.get("/stream/orphan").content == b"abc"
