from __future__ import annotations

import httpx

from tests.server import ServerProcess


def test_posted_stream_reads_back_byte_for_byte(
    server: ServerProcess, client: httpx.Client
) -> None:
    created = client.post("/stream/smoke", content=b"hello\nworld\n")
    assert created.status_code == 201
    assert created.headers["x-stream-id"] == "smoke"
    assert created.json()["size"] == 12
    read = client.get("/stream/smoke")
    assert read.status_code == 200
    assert read.content == b"hello\nworld\n"
    assert read.headers["x-stream-state"] == "complete"
