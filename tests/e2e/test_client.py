"""The client library (app.client) against a real server: drops, restarts, refusals."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from app.client import (
    AsyncStreamWriter,
    Backoff,
    StreamRefused,
    StreamWriter,
    atail,
    tail,
)
from tests.server import ServerProcess

FAST = Backoff(retries=20, factor=2, min_delay=0.05, max_delay=0.5)
DEADLINE = 15.0


class CuttableProxy:
    """A TCP relay to the server whose open connections the test can cut: a
    network drop without a server restart (the server sees the peer leave)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.held: set[socket.socket] = set()  # server sides kept open by cut(hold_server=True)
        self.mute = 0  # the next this many connections never relay the server's answer
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self._spawn(self._accept)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self.lock:
            self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                downstream.close()  # the server is down: the client sees a drop
                continue
            with self.lock:
                self.sockets += [downstream, upstream]
                mute, self.mute = self.mute > 0, max(self.mute - 1, 0)
            self._spawn(self._pipe, downstream, upstream)  # sockets: [down, up, down, up ...]
            self._spawn(self._pipe, upstream, downstream, mute)

    def _pipe(self, source: socket.socket, target: socket.socket, mute: bool = False) -> None:
        try:
            while data := source.recv(65536):
                if not mute:
                    target.sendall(data)
        except OSError:
            pass
        with self.lock:
            ends = [sock for sock in (source, target) if sock not in self.held]
        _shutdown(ends)

    def cut(self, *, hold_server: bool = False) -> None:
        """Drop every open connection. With hold_server the server's side stays
        open, as after a network failure the server has not noticed yet."""
        with self.lock:
            if hold_server:
                self.held.update(self.sockets[1::2])
            _shutdown([sock for sock in self.sockets if sock not in self.held])

    def release(self) -> None:
        """Let the server notice the connections cut with hold_server."""
        with self.lock:
            held, self.held = list(self.held), set()
        _shutdown(held)

    def close(self) -> None:
        _shutdown([self.listener])  # wakes accept(); close() alone does not
        self.listener.close()
        self.release()
        self.cut()
        for thread in list(self.threads):
            thread.join(5)
        for sock in self.sockets:
            sock.close()


def _shutdown(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[CuttableProxy]:
    relay = CuttableProxy(server.port)
    yield relay
    relay.close()


class Collector:
    """What a tail reader received, with a wait for "at least n bytes"."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.cond = threading.Condition()

    def add(self, chunk: bytes) -> None:
        with self.cond:
            self.chunks.append(chunk)
            self.size += len(chunk)
            self.cond.notify_all()

    def wait_for(self, size: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.size >= size, DEADLINE), self.size

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def wait_stored(client: httpx.Client, stream_id: str, size: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while int(client.head(f"/stream/{stream_id}").headers.get("upload-offset", -1)) < size:
        assert time.monotonic() < deadline, f"{stream_id} never reached {size} bytes"
        time.sleep(0.02)


def wait_exists(client: httpx.Client, stream_id: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while client.get(f"/streams/{stream_id}").status_code != 200:
        assert time.monotonic() < deadline, f"{stream_id} was never created"
        time.sleep(0.02)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_tail_reader_gets_every_byte_once_across_a_server_restart(
    server: ServerProcess, client: httpx.Client
) -> None:
    rng = random.Random(1)
    before, after = rng.randbytes(1 << 20), rng.randbytes(1 << 20)
    writer = StreamWriter(server.url, "restarted", backoff=FAST).start()
    assert writer.wait_created(DEADLINE) == "restarted"
    received = Collector()
    failures: list[BaseException] = []

    def read() -> None:
        try:
            for chunk in tail(server.url, "restarted", backoff=FAST):
                received.add(chunk)
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    writer.write(before)
    received.wait_for(len(before))
    server.kill()
    server.start()
    writer.write(after)
    result = writer.close()
    reader.join(DEADLINE)
    assert not reader.is_alive() and not failures, failures
    assert received.data == before + after
    assert result.size == len(before + after) and result.sha256 == sha(before + after)


def test_writer_resumes_after_a_dropped_connection(
    server: ServerProcess, client: httpx.Client, proxy: CuttableProxy
) -> None:
    retries: list[str] = []
    first, second = b"before the drop\n" * 1000, b"after the drop\n" * 1000
    writer = StreamWriter(
        proxy.url, "dropped", backoff=FAST, on_retry=lambda n, d, why: retries.append(why)
    )
    with writer:
        writer.write(first)
        wait_stored(client, "dropped", len(first))
        proxy.cut()
        writer.write(second)
    result = writer.wait()
    assert retries, "the connection was never lost"
    assert result.state == "complete" and result.sha256 == sha(first + second)
    assert client.get("/stream/dropped").content == first + second


def test_writer_resumes_the_stream_whose_201_it_never_saw(
    server: ServerProcess, client: httpx.Client, proxy: CuttableProxy
) -> None:
    # The server created the stream and stored bytes, but its 201 was lost:
    # the retried POST's 409 names a stream holding exactly what we sent.
    proxy.mute = 1
    first, second = b"sent before the 201 was lost\n" * 500, b"and after\n" * 500
    retries: list[str] = []
    writer = StreamWriter(
        proxy.url, "lost-201", backoff=FAST, on_retry=lambda n, d, why: retries.append(why)
    )
    with writer:
        writer.write(first)
        wait_stored(client, "lost-201", len(first))
        assert not writer.created
        proxy.cut()
        writer.write(second)
    result = writer.wait()
    assert any("answer to the POST" in why for why in retries), retries
    assert result.state == "complete" and result.sha256 == sha(first + second)
    assert client.get("/stream/lost-201").content == first + second


def test_writer_whose_post_dropped_is_refused_a_stream_that_is_not_its_own(
    server: ServerProcess, client: httpx.Client, proxy: CuttableProxy
) -> None:
    assert client.post("/stream/theirs", content=b"their bytes").status_code == 201
    proxy.mute = 1  # the first POST's 409 never arrives: the writer sees a drop
    writer = StreamWriter(proxy.url, "theirs", backoff=FAST)
    with pytest.raises(StreamRefused) as refused:
        with writer:
            writer.write(b"our bytes, not theirs\n" * 100)
    assert refused.value.status == 409
    assert client.get("/stream/theirs").content == b"their bytes"


def test_writer_resumes_the_empty_stream_whose_201_it_never_saw(
    server: ServerProcess, client: httpx.Client, proxy: CuttableProxy
) -> None:
    # A node that died between creating the stream and sending its 201: the
    # stream holds no byte, but it has our metadata and was created after our POST.
    proxy.mute = 1
    data = b"written once the writer knew the stream was its own\n" * 500
    retries: list[str] = []
    writer = StreamWriter(
        proxy.url,
        "lost-empty-201",
        metadata={"job": "ours"},
        backoff=FAST,
        on_retry=lambda n, d, why: retries.append(why),
    )
    with writer:
        wait_exists(client, "lost-empty-201")
        assert not writer.created
        proxy.cut()
        writer.write(data)
    result = writer.wait()
    assert any("answer to the POST" in why for why in retries), retries
    assert result.state == "complete" and result.sha256 == sha(data)
    assert client.get("/stream/lost-empty-201").content == data
    assert client.get("/streams/lost-empty-201").json()["metadata"] == {"job": "ours"}


def test_writer_whose_post_dropped_is_refused_an_empty_stream_of_other_metadata(
    server: ServerProcess, client: httpx.Client, proxy: CuttableProxy
) -> None:
    # Another producer's stream, live and still empty: its producer dropped.
    with socket.create_connection(("127.0.0.1", server.port)) as theirs:
        theirs.sendall(
            b"POST /stream/empty-theirs HTTP/1.1\r\nHost: weft\r\n"
            b"Transfer-Encoding: chunked\r\n"
            b'X-Stream-Metadata: {"job":"theirs"}\r\n\r\n'
        )
        assert theirs.recv(65536).startswith(b"HTTP/1.1 201 ")
    proxy.mute = 1  # the first POST's 409 never arrives: the writer sees a drop
    writer = StreamWriter(proxy.url, "empty-theirs", metadata={"job": "ours"}, backoff=FAST)
    with pytest.raises(StreamRefused) as refused:
        with writer:
            writer.write(b"our bytes, not theirs\n" * 100)
    assert refused.value.status == 409
    info = client.get("/streams/empty-theirs").json()
    assert (info["size"], info["metadata"]) == (0, {"job": "theirs"})


def test_writer_waits_out_a_server_that_still_sees_the_old_producer(
    server_factory: Callable[..., ServerProcess],
) -> None:
    # A server that never ends the old producer for a resume (the lock
    # exchange after handoff_idle, tests/e2e/test_handoff.py): the writer must
    # wait out its 409s until the old connection goes.
    server = server_factory(handoff_idle=600)
    proxy = CuttableProxy(server.port)
    client = httpx.Client(base_url=server.url, timeout=10)
    try:
        _waits_out_the_old_producer(client, proxy)
    finally:
        client.close()
        proxy.close()


def _waits_out_the_old_producer(client: httpx.Client, proxy: CuttableProxy) -> None:
    busy = threading.Event()

    def on_retry(attempt: int, delay: float, reason: str) -> None:
        if "409" in reason:
            busy.set()

    first, second = b"a" * 50_000, b"b" * 50_000
    with StreamWriter(proxy.url, "half-open", backoff=FAST, on_retry=on_retry) as writer:
        writer.write(first)
        wait_stored(client, "half-open", len(first))
        proxy.cut(hold_server=True)
        writer.write(second)
        assert busy.wait(DEADLINE), "the resume was never refused as busy"
        proxy.release()
    assert writer.wait().sha256 == sha(first + second)
    assert client.get("/stream/half-open").content == first + second


async def test_async_writer_and_reader_survive_a_cut(
    server: ServerProcess, proxy: CuttableProxy
) -> None:
    first, second = random.Random(2).randbytes(300_000), b"tail end\n"
    received = bytearray()
    got_first = asyncio.Event()

    async def read() -> None:
        async for chunk in atail(proxy.url, "async-cut", backoff=FAST):
            received.extend(chunk)
            if len(received) >= len(first):
                got_first.set()

    async with AsyncStreamWriter(proxy.url, "async-cut", backoff=FAST) as writer:
        assert await writer.wait_created(DEADLINE) == "async-cut"
        reader = asyncio.create_task(read())
        await writer.write(first)
        await asyncio.wait_for(got_first.wait(), DEADLINE)
        proxy.cut()  # both the producer's and the reader's connections
        await writer.write(second)
    await asyncio.wait_for(reader, DEADLINE)
    assert bytes(received) == first + second


def test_small_buffer_applies_back_pressure_and_loses_nothing(
    server: ServerProcess, client: httpx.Client
) -> None:
    data = random.Random(3).randbytes(3 << 20)
    with StreamWriter(server.url, "pressed", buffer_bytes=64 * 1024) as writer:
        for start in range(0, len(data), 10_000):
            writer.write(data[start : start + 10_000])
            assert writer.size == min(start + 10_000, len(data))
    assert writer.wait().sha256 == sha(data)
    assert sha(client.get("/stream/pressed").content) == sha(data)


def test_refusals_raise_at_once_with_the_servers_message(
    server: ServerProcess, client: httpx.Client
) -> None:
    assert client.post("/stream/mine", content=b"x").status_code == 201
    writer = StreamWriter(server.url, "mine", backoff=FAST)
    with pytest.raises(StreamRefused) as taken:
        writer.wait_created(DEADLINE)
    assert taken.value.status == 409 and "already exists" in taken.value.message
    with pytest.raises(StreamRefused):
        writer.write(b"more")
    bad = StreamWriter(server.url, ".hidden", backoff=FAST)
    with pytest.raises(StreamRefused) as invalid:
        bad.close()
    assert invalid.value.status == 400
    with pytest.raises(StreamRefused) as missing:
        list(tail(server.url, "nothing-here", backoff=FAST))
    assert missing.value.status == 404


def test_tail_of_a_finished_stream_ends_after_its_bytes(
    server: ServerProcess, client: httpx.Client
) -> None:
    client.post("/stream/done", content=b"0123456789")
    assert b"".join(tail(server.url, "done")) == b"0123456789"
    assert b"".join(tail(server.url, "done", offset=4)) == b"456789"


def test_tail_refuses_to_splice_a_stream_replaced_while_it_was_read(
    server: ServerProcess, client: httpx.Client
) -> None:
    writer = StreamWriter(server.url, "replaced", backoff=FAST).start()
    try:
        writer.write(b"old incarnation\n")
        writer.wait_created(timeout=DEADLINE)  # the POST runs on the writer's thread
        chunks = tail(server.url, "replaced", backoff=FAST)
        assert next(chunks) == b"old incarnation\n"
        # Replacing ends the old reader's response; its reconnect finds a new stream.
        created = client.post("/stream/replaced?force=true", content=b"a longer new incarnation\n")
        assert created.headers["x-stream-replaced"] == "true"
        with pytest.raises(StreamRefused) as refused:
            next(chunks)
        assert refused.value.status == 409
        assert "replaced" in refused.value.message
    finally:
        writer.abort()


def test_stream_responses_name_their_incarnation(client: httpx.Client) -> None:
    client.post("/stream/twice", content=b"one")
    first = client.head("/stream/twice").headers["x-stream-created"]
    assert first == client.get("/streams/twice").json()["created_at"]
    client.post("/stream/twice?force=true", content=b"two")
    assert client.get("/stream/twice").headers["x-stream-created"] != first
