"""Producer leases across nodes (SPEC §12.2, one producer per stream across the
cluster): with database_url on PostgreSQL the lease is a row there, taken by
the node the producer writes through, left alone by a resume through another
node, forgotten once the stream finishes. (With file: stores another node
cannot read the bytes anyway; a takeover across nodes needs the JetStream
tail in the factory.)"""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx

from tests.e2e.helpers import unique_id, wait_for
from tests.pg import PG_URL, new_namespace, require_pg, run_query
from tests.server import ServerProcess


def open_producer(server: ServerProcess, stream_id: str, first: bytes) -> socket.socket:
    """A chunked POST that sent first and stays open (the producer is connected)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        f"POST /stream/{stream_id} HTTP/1.1\r\nHost: weft\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
        + f"{len(first):x}\r\n".encode()
        + first
        + b"\r\n"
    )
    return sock


def offset(server: ServerProcess, stream_id: str) -> str | None:
    return httpx.head(f"{server.url}/stream/{stream_id}", timeout=10).headers.get("upload-offset")


def lease_rows(namespace: str, stream_id: str) -> list[tuple[object, ...]]:
    return run_query(
        f"SELECT node_id, epoch FROM \"{namespace}\".leases WHERE stream_id = '{stream_id}'"
    )


def test_a_live_stream_held_by_one_node_is_not_taken_over_by_another(
    server_factory: Callable[..., ServerProcess],
) -> None:
    require_pg()
    namespace = new_namespace()
    shared = {"database_url": PG_URL, "namespace": namespace}
    a, b = (server_factory(node_id=name, **shared) for name in ("node-a", "node-b"))
    stream_id = unique_id("held")
    producer = open_producer(a, stream_id, b"first ")
    try:
        wait_for(lambda: offset(a, stream_id) == "6", "the first chunk stored on A")
        assert lease_rows(namespace, stream_id) == [("node-a", 1)]
        # A resume through B: A holds the lease, so B neither takes it nor appends.
        patch = httpx.patch(
            f"{b.url}/stream/{stream_id}",
            content=b"stolen",
            headers={"Upload-Offset": "6", "Content-Type": "application/offset+octet-stream"},
            timeout=10,
        )
        assert patch.status_code == 409, patch.text
        head = httpx.head(f"{b.url}/stream/{stream_id}", timeout=10)
        assert head.status_code == 200
        assert lease_rows(namespace, stream_id) == [("node-a", 1)]
        # A's producer carries on and finishes its stream.
        producer.sendall(b"6\r\nsecond\r\n0\r\n\r\n")
        reply = producer.recv(4096)
        assert reply.startswith(b"HTTP/1.1 201"), reply
    finally:
        producer.close()
    got = httpx.get(f"{a.url}/stream/{stream_id}", timeout=10)
    assert got.content == b"first second"
    assert lease_rows(namespace, stream_id) == []  # forgotten once finished
