"""A node dies, nothing stops (SPEC §12.2), on PostgreSQL (the leases), S3
(SeaweedFS) and JetStream (a nats-server of the test's own): while node A holds
a live stream's lease another node refuses its producer; once A is killed
with -9, the producer resumes through node B, which takes the lease over at
the next epoch, and the stream ends byte-exact."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import httpx

from tests.e2e.helpers import open_producer, unique_id, wait_for
from tests.nats_env import NatsServer
from tests.pg import PG_URL, new_namespace, require_pg, run_query
from tests.s3.test_cluster_on_s3 import SEG, nats_server  # noqa: F401 (a fixture)
from tests.s3server import S3Server
from tests.server import ServerProcess

MiB = 1024 * 1024
LEASE_TTL = 2.0
OCTETS = {"Content-Type": "application/offset+octet-stream"}


def lease(namespace: str, stream_id: str) -> list[tuple[Any, ...]]:
    return run_query(
        f"SELECT node_id, epoch FROM \"{namespace}\".leases WHERE stream_id = '{stream_id}'"
    )


def test_a_killed_nodes_stream_is_taken_over_at_the_next_epoch_and_ends_byte_exact(
    server_factory: Callable[..., ServerProcess],
    s3_server: S3Server,
    s3_bucket: str,
    nats_server: NatsServer,  # noqa: F811
) -> None:
    require_pg()
    namespace = new_namespace()
    shared: dict[str, Any] = {
        "database_url": PG_URL,
        "namespace": namespace,
        "tail_url": nats_server.url,
        "store_url": f"s3://{s3_bucket}/pre",
        "segment_bytes": SEG,
        "cache_bytes": 0,
        "lease_ttl": LEASE_TTL,
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
    a, b = (server_factory(node_id=name, **shared) for name in ("node-a", "node-b"))
    stream_id = unique_id("takeover")
    data = os.urandom(SEG + 2 * MiB)
    half = SEG + MiB  # past a segment boundary: segment 0 goes to the bucket
    conn, head = open_producer(a.port, f"/stream/{stream_id}")
    assert head.status == 201
    try:
        for at in range(0, half, 256 * 1024):
            conn.send_chunk(data[at : min(at + 256 * 1024, half)])
        with httpx.Client(base_url=b.url, timeout=30) as on_b:

            def offset() -> int:
                return int(on_b.head(f"/stream/{stream_id}").headers["upload-offset"])

            wait_for(lambda: offset() == half, "the first half stored")
            assert lease(namespace, stream_id) == [("node-a", 1)]
            # A holds the lease: a second producer through B is refused.
            refused = on_b.patch(
                f"/stream/{stream_id}",
                content=b"x",
                headers={"Upload-Offset": str(half), **OCTETS},
            )
            assert refused.status_code == 409, refused.text
            assert lease(namespace, stream_id) == [("node-a", 1)]

            a.kill()  # -9: no release, its lease runs out by itself

            rest = half + MiB

            def resumed() -> httpx.Response | None:
                response = on_b.patch(
                    f"/stream/{stream_id}",
                    content=data[half:rest],
                    headers={"Upload-Offset": str(half), **OCTETS},
                )
                return response if response.status_code == 204 else None

            taken = wait_for(resumed, "the resume through B", timeout=LEASE_TTL * 10)
            assert taken.headers["upload-offset"] == str(rest)
            assert lease(namespace, stream_id) == [("node-b", 2)]
            done = on_b.patch(
                f"/stream/{stream_id}",
                content=data[rest:],
                headers={"Upload-Offset": str(rest), "Upload-Complete": "?1", **OCTETS},
            )
            assert (done.status_code, done.headers["upload-offset"]) == (204, str(len(data)))
            info = on_b.get(f"/streams/{stream_id}").json()
            assert (info["state"], info["size"]) == ("complete", len(data))
            assert info["sha256"] == hashlib.sha256(data).hexdigest()
            assert on_b.get(f"/stream/{stream_id}").content == data
    finally:
        conn.close()
    assert lease(namespace, stream_id) == []  # forgotten once complete
