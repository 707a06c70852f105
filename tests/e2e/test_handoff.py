"""On one node: a resume ends a producer whose connection went silent for
handoff_idle seconds (tusd's lock exchange); one that is sending keeps the
stream (SPEC §2: a second producer gets 409)."""

from __future__ import annotations

import socket
import time

import httpx

from tests.e2e.helpers import RawConnection, request_head, unique_id
from tests.e2e.test_spy import RawProducer
from tests.server import ServerProcess

IDLE = 0.5
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}


def _handoff_server(server_factory) -> ServerProcess:  # type: ignore[no-untyped-def]
    server: ServerProcess = server_factory(handoff_idle=IDLE)
    return server


def test_a_patch_on_the_same_node_replaces_a_half_open_post(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = _handoff_server(server_factory)
    stream_id = unique_id("same")
    with RawProducer(server.port, stream_id) as producer:
        producer.send(b"a" * 1000)
        time.sleep(IDLE + 0.5)
        head = httpx.head(f"{server.url}/stream/{stream_id}", timeout=10)
        assert head.headers["upload-offset"] == "1000"
        patch = httpx.patch(
            f"{server.url}/stream/{stream_id}",
            headers={"Upload-Offset": "1000", "Upload-Complete": "?1"},
            content=b"b" * 500,
            timeout=10,
        )
        assert patch.status_code == 204, patch.text
        # Bytes the old connection sends now are not stored.
        sock: socket.socket = producer._sock
        try:
            producer.send(b"LATE")
        except OSError:
            pass
        sock.settimeout(5)
        old = b""
        try:
            while data := sock.recv(65536):
                old += data
        except OSError:
            pass
        assert b"Another request resumed" in old
    got = httpx.get(f"{server.url}/stream/{stream_id}", timeout=10)
    assert got.content == b"a" * 1000 + b"b" * 500


def test_a_tus_patch_replaces_a_half_open_tus_patch(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = _handoff_server(server_factory)
    total = 3000
    created = httpx.post(f"{server.url}/files/", headers={**TUS, "Upload-Length": str(total)})
    path = created.headers["location"]
    upload = path.rsplit("/", 1)[-1]
    old = RawConnection(server.port)
    headers = {**OCTETS, "Upload-Offset": "0", "Content-Length": str(total)}
    old.send(request_head("PATCH", f"/files/{upload}", headers))
    old.send(b"x" * 1000)  # then silent: 2000 bytes promised, never sent
    try:
        deadline = time.monotonic() + 10
        while True:
            head = httpx.head(f"{server.url}/files/{upload}", headers=TUS, timeout=10)
            if head.headers["upload-offset"] == "1000" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert head.headers["upload-offset"] == "1000"
        time.sleep(IDLE + 0.5)
        patch = httpx.patch(
            f"{server.url}/files/{upload}",
            headers={**OCTETS, "Upload-Offset": "1000"},
            content=b"y" * 2000,
            timeout=10,
        )
        assert patch.status_code == 204, patch.text
        assert old.read_head().status == 423
    finally:
        old.close()
    got = httpx.get(f"{server.url}/stream/{upload}", timeout=10)
    assert got.content == b"x" * 1000 + b"y" * 2000


def test_a_producer_sending_keeps_its_stream_on_the_same_node(server: ServerProcess) -> None:
    # The default handoff_idle (2 s): a loaded machine may delay a chunk a little.
    stream_id = unique_id("busy")
    sent = b""
    with RawProducer(server.port, stream_id) as producer:
        refused = None
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            chunk = b"%d\n" % len(sent)
            producer.send(chunk)
            sent += chunk
            time.sleep(0.1)
            size = len(sent)
            refused = httpx.patch(
                f"{server.url}/stream/{stream_id}",
                headers={"Upload-Offset": str(size)},
                content=b"intruder",
                timeout=10,
            )
            assert refused.status_code == 409, refused.text
        assert refused is not None and "already has a producer" in refused.json()["error"]
        result = producer.finish()
    assert result["size"] == len(sent)
    assert httpx.get(f"{server.url}/stream/{stream_id}", timeout=10).content == sent
