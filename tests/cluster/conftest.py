"""Three Weft nodes as one service (SPEC §12.2) on the real engines: one
PostgreSQL schema, one S3 bucket and one NATS namespace per test, a data dir of
its own per node, and a TCP balancer in front (tests/cluster/balancer.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.cluster.balancer import Balancer
from tests.nats_env import NATS_URL, drop_streams, require_nats
from tests.pg import PG_URL, new_namespace, require_pg
from tests.s3server import S3Server
from tests.server import ServerProcess

MiB = 1024 * 1024
SEG = 5 * MiB  # the smallest segment S3 allows: streams cross segments quickly
LEASE_TTL = 2.0


@dataclass
class Cluster:
    nodes: list[ServerProcess]
    balancer: Balancer
    namespace: str
    bucket: str
    s3: S3Server

    def alive(self) -> list[int]:
        return [n.port for n in self.nodes if n.proc is not None and n.proc.poll() is None]


@pytest.fixture
def cluster_config(s3_server: S3Server, s3_bucket: str) -> dict[str, Any]:
    require_pg()
    require_nats()
    return {
        "database_url": PG_URL,
        "namespace": new_namespace(),  # the schema, the key prefix and the subjects
        "store_url": f"s3://{s3_bucket}/cluster",
        "tail_url": NATS_URL,
        "segment_bytes": SEG,
        "cache_bytes": 4 * SEG,
        "lease_ttl": LEASE_TTL,
        "s3": {
            "endpoint_url": s3_server.endpoint_url,
            "region": s3_server.region,
            "access_key_id": s3_server.access_key_id,
            "secret_access_key": s3_server.secret_access_key,
            "part_bytes": SEG,
            "retries": 3,
            "timeout": 10,
            "max_backoff": 0.2,
        },
    }


@pytest.fixture
def cluster(
    server_factory: Callable[..., ServerProcess],
    cluster_config: dict[str, Any],
    s3_server: S3Server,
) -> Iterator[Cluster]:
    namespace = cluster_config["namespace"]
    # One after the other: the first applies the migrations (the others would
    # wait on the advisory lock anyway).
    nodes = [
        server_factory(node_id=name, **cluster_config) for name in ("node-a", "node-b", "node-c")
    ]
    group = Cluster(nodes, Balancer(lambda: group.alive()), namespace, "", s3_server)
    group.bucket = cluster_config["store_url"][len("s3://") :].split("/")[0]
    try:
        yield group
    finally:
        group.balancer.close()
        for node in nodes:
            node.stop()
        drop_streams(f"{namespace}_")
