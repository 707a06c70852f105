"""HTTP timeouts (SPEC §8, issue 9): a request head is due within
``http.header_timeout``, a response whose client takes nothing is cut after
``http.send_timeout``; a paused producer body and a silent live tail are neither."""

from __future__ import annotations

import json
import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import (
    RawConnection,
    finish_producer,
    get_bytes,
    module_server,
    numbered_lines,
    open_producer,
    request_head,
    summary,
    unique_id,
    wait_for,
    wait_for_offset,
)
from tests.server import ServerProcess

HEADER_TIMEOUT = 1.0
SEND_TIMEOUT = 2.0
# Longer than both timeouts: a pause of this length must cut nothing that is not stalled.
PAUSE = HEADER_TIMEOUT + SEND_TIMEOUT + 1.0
# How long after its deadline a connection may still be open (checks, a loaded machine).
GRACE = 6.0


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(
        tmp_path_factory.mktemp("timeouts"),
        http={"header_timeout": HEADER_TIMEOUT, "send_timeout": SEND_TIMEOUT},
    )


@pytest.fixture
def http(timed: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=timed.url, timeout=10) as client:
        yield client


def drain(sock: socket.socket) -> tuple[bytes, bool]:
    """What a readable socket holds; True when the server has closed it."""
    try:
        data = sock.recv(65536)
    except ConnectionResetError:
        return b"", True
    return data, not data


def assert_408(data: bytes) -> None:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), data[:200]
    assert b"connection: close" in head.lower()
    assert b"content-type: application/json" in head.lower()
    assert "request head" in json.loads(body)["error"]


def bigger_than_socket_buffers() -> int:
    """Bytes that cannot all sit in the kernel's send and receive buffers, so the
    server is left holding some (9.6 MB with Linux's default 4 MiB maximum)."""
    try:
        largest = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        largest = 4 * 1024 * 1024
    return max(9_600_000, 2 * largest + 1_000_000)


def live_readers(http: httpx.Client) -> float:
    text = http.get("/metrics").text
    match = re.search(r"^weft_live_readers (\S+)$", text, re.MULTILINE)
    assert match, text[:500]
    return float(match.group(1))


def test_slowloris_and_silent_connections_are_closed_while_others_are_served(
    timed: ServerProcess, http: httpx.Client
) -> None:
    slow = [socket.create_connection(("127.0.0.1", timed.port)) for _ in range(50)]
    silent = [socket.create_connection(("127.0.0.1", timed.port)) for _ in range(10)]
    opened = time.monotonic()
    received: dict[socket.socket, bytes] = {sock: b"" for sock in slow + silent}
    open_socks = set(received)
    try:
        for sock in slow:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: ")
        served = False
        while open_socks and time.monotonic() < opened + HEADER_TIMEOUT + GRACE:
            for sock in slow:
                if sock in open_socks:
                    try:
                        sock.sendall(b"a")  # one byte of a header line that never ends
                    except OSError:
                        pass  # closed by the server: the read below sees it
            if not served:
                # Served while 60 connections hold their heads back.
                assert http.get("/healthz").json() == {"status": "ok"}
                served = True
            readable, _, _ = select.select(list(open_socks), [], [], 0.3)
            for sock in readable:
                data, closed = drain(sock)
                received[sock] += data
                if closed:
                    open_socks.discard(sock)
        assert served
        assert not open_socks, f"{len(open_socks)} of 60 connections are still open"
        # A connection that sent nothing gets the 408 before the close.
        for sock in silent:
            assert_408(received[sock])
        # A slowloris one too, unless its unread bytes made the close a reset.
        for sock in slow:
            if received[sock]:
                assert_408(received[sock])
        assert http.get("/healthz").status_code == 200
    finally:
        for sock in received:
            sock.close()


def test_a_head_that_dribbles_in_on_a_kept_alive_connection_is_closed(
    timed: ServerProcess,
) -> None:
    with RawConnection(timed.port) as conn:
        conn.send(request_head("GET", "/healthz"))
        head, body = conn.read_response()
        assert head.status == 200 and json.loads(body) == {"status": "ok"}
        conn.send(b"GET /healthz HTTP/1.1\r\n")
        started = time.monotonic()
        conn.sock.settimeout(0.3)
        closed = False
        while not closed and time.monotonic() < started + HEADER_TIMEOUT + GRACE:
            try:
                conn.send(b"X")  # keeps uvicorn's idle keep-alive timeout from firing
                data, closed = drain(conn.sock)
                conn.buffer += data
            except TimeoutError:
                pass
            except OSError:
                closed = True
        assert closed, "the connection is still open"
        if conn.buffer:
            assert_408(conn.buffer)


def test_a_head_sent_in_time_is_answered_however_slow_its_body(
    timed: ServerProcess, http: httpx.Client
) -> None:
    """A producer's body may pause longer than both timeouts and still end byte-exact."""
    stream_id = unique_id("paused")
    first, second = numbered_lines(0, 200), numbered_lines(200, 200)
    conn, head = open_producer(timed.port, f"/stream/{stream_id}")
    with conn:
        assert head.status == 201
        conn.send_chunk(first)
        wait_for_offset(http, stream_id, len(first))
        conn.assert_silent(PAUSE)  # a silent build step
        conn.send_chunk(second)
        assert finish_producer(conn) == summary(stream_id, first + second)
    assert get_bytes(http, stream_id) == first + second


def test_a_silent_live_tail_is_never_cut(timed: ServerProcess, http: httpx.Client) -> None:
    stream_id = unique_id("quiet")
    first, later = b"before the quiet\n", b"after the quiet\n"
    producer, head = open_producer(timed.port, f"/stream/{stream_id}")
    with producer, RawConnection(timed.port) as reader:
        assert head.status == 201
        producer.send_chunk(first)
        wait_for_offset(http, stream_id, len(first))
        reader.send(request_head("GET", f"/stream/{stream_id}"))
        tail = reader.read_head()
        assert tail.status == 200 and tail.chunked
        assert reader.read_chunks_until(len(first)) == first
        reader.assert_silent(PAUSE)  # open, though nothing came for longer than both timeouts
        producer.send_chunk(later)
        assert reader.read_chunks_until(len(later)) == later
        finish_producer(producer)
        assert reader.read_chunk() == b""


def test_a_reader_that_takes_nothing_is_cut_and_released(
    timed: ServerProcess, http: httpx.Client
) -> None:
    stream_id = unique_id("unread")
    data = numbered_lines(0, bigger_than_socket_buffers() // 32)
    assert http.post(f"/stream/{stream_id}", content=data).status_code == 201
    assert live_readers(http) == 0
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", timed.port))
    with sock:
        sock.sendall(request_head("GET", f"/stream/{stream_id}"))
        wait_for(lambda: live_readers(http) == 1, "the reader's response to start")
        # Its response is released once the client has taken nothing for send_timeout.
        wait_for(
            lambda: live_readers(http) == 0, "the stalled response to end", SEND_TIMEOUT + GRACE
        )
        assert any("send_timeout" in line for line in timed.log)
        sock.settimeout(10)
        taken = 0
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(65536):
                taken += len(chunk)
        assert taken < len(data)
    # The server goes on serving the same stream to a reader that reads.
    assert http.get(f"/stream/{stream_id}").content == data


def test_a_slow_reader_that_keeps_taking_bytes_is_not_cut(
    timed: ServerProcess, http: httpx.Client
) -> None:
    stream_id = unique_id("slow")
    data = numbered_lines(0, 300_000)
    assert http.post(f"/stream/{stream_id}", content=data).status_code == 201
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", timed.port))
    with sock:
        sock.settimeout(10)
        sock.sendall(request_head("GET", f"/stream/{stream_id}"))
        received = b""
        until = time.monotonic() + PAUSE
        while time.monotonic() < until:  # a trickle: 1 KiB every 0.2 s
            received += sock.recv(1024)
            time.sleep(0.2)
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert f"content-length: {len(data)}".encode() in head.lower()
        while len(body) < len(data) and (chunk := sock.recv(1 << 20)):
            body += chunk
    assert body == data


def test_the_header_timeout_can_be_set_from_the_environment(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start(env={"WEFT_HTTP__HEADER_TIMEOUT": "0.5"})
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert_408(answer)
        assert "0.5 seconds" in answer.decode()
    finally:
        server.stop()


def test_a_stopped_tail_of_a_stream_still_written_is_cut_and_the_producer_goes_on(
    timed: ServerProcess, http: httpx.Client
) -> None:
    stream_id = unique_id("stalled-tail")
    line = numbered_lines(0, 2048)  # 64 KiB
    rounds = bigger_than_socket_buffers() // len(line) + 1
    producer, head = open_producer(timed.port, f"/stream/{stream_id}")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with producer, sock:
        assert head.status == 201
        producer.send_chunk(line)
        wait_for_offset(http, stream_id, len(line))
        sock.connect(("127.0.0.1", timed.port))
        sock.sendall(request_head("GET", f"/stream/{stream_id}"))
        wait_for(lambda: live_readers(http) == 1, "the tail to start")
        for _ in range(rounds):  # far more than the reader's buffers hold
            producer.send_chunk(line)
        wait_for_offset(http, stream_id, len(line) * (rounds + 1))
        wait_for(lambda: live_readers(http) == 0, "the stalled tail to end", SEND_TIMEOUT + GRACE)
        # The producer was never slowed or cut: it finishes its stream.
        producer.send_chunk(b"the end\n")
        result = finish_producer(producer)
        assert result["size"] == len(line) * (rounds + 1) + len(b"the end\n")
        sock.settimeout(10)
        with pytest.raises(ConnectionResetError):
            while sock.recv(65536):
                pass
