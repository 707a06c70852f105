"""Producer leases between real server processes on one PostgreSQL (DESIGN
"Scale-out" step 2): a node that starts leaves another node's live streams
alone, and a resume through it is refused while their node holds them.

Each node keeps its bytes in a data dir of its own (no shared store yet), so a
stream is only ever continued through the node that wrote it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.helpers import finish_producer, open_producer, unique_id, wait_for_offset
from tests.pg import PG_URL, new_namespace, require_pg
from tests.server import ServerProcess


@pytest.fixture
def shared() -> dict[str, str]:
    require_pg()
    return {"database_url": PG_URL, "namespace": new_namespace()}


def test_a_starting_node_leaves_another_nodes_live_stream_alone(
    server_factory: Callable[..., ServerProcess], shared: dict[str, str]
) -> None:
    a = server_factory(node_id="node-a", checkpoint_interval=0.1, **shared)
    stream_id = unique_id("owned")
    conn, head = open_producer(a.port, f"/stream/{stream_id}")
    with conn, httpx.Client(base_url=a.url, timeout=10) as on_a:
        assert head.status == 201
        conn.send_chunk(b"written through a, ")
        wait_for_offset(on_a, stream_id, 19)
        time.sleep(0.5)  # a's size checkpoint reaches the row

        # b starts on the same database: before leases it rebuilt every live row
        # from its own (empty) disk, writing size 0 over a's stream.
        b = server_factory(node_id="node-b", **shared)
        assert not any(stream_id in line for line in b.log if "stream_recovered" in line)
        with httpx.Client(base_url=b.url, timeout=10) as on_b:
            row = on_b.get(f"/streams/{stream_id}").json()
            assert (row["state"], row["size"]) == ("live", 19)
            refused = on_b.patch(
                f"/stream/{stream_id}", content=b"x", headers={"Upload-Offset": "19"}
            )
            assert refused.status_code == 409, refused.text
            assert "already has a producer" in refused.json()["error"]

        conn.send_chunk(b"and completed there")
        result = finish_producer(conn)
    whole = b"written through a, and completed there"
    assert (result["state"], result["size"]) == ("complete", len(whole))
    assert result["sha256"] == hashlib.sha256(whole).hexdigest()
    with httpx.Client(base_url=b.url, timeout=10) as on_b:
        info = on_b.get(f"/streams/{stream_id}").json()
    assert (info["state"], info["size"]) == ("complete", len(whole))
