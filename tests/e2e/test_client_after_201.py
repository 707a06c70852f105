"""The client library and an error after the 201 (SPEC §2): a stream the error
ended (the size limit completed it) is final; one it left live is resumed
(tests/cluster/test_nats_restart.py has the tail store unreachable)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from app.client import Backoff, ClientError, StreamWriter
from tests.e2e.helpers import unique_id
from tests.server import ServerProcess

FAST = Backoff(retries=3, min_delay=0.05, max_delay=0.2)


def test_a_stream_the_size_limit_completed_is_not_resumed(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(limits={"stream_bytes": 1000})
    stream_id = unique_id("limited")
    writer = StreamWriter(server.url, stream_id, backoff=FAST).start()
    with pytest.raises(ClientError) as stopped:
        writer.write(b"x" * 600)
        writer.write(b"y" * 600)
        writer.close()
    assert "size limit" in str(stopped.value)
    info = httpx.get(f"{server.url}/streams/{stream_id}", timeout=10).json()
    assert (info["state"], info["size"]) == ("complete", 1000)
