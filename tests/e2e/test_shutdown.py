"""A normal stop (SIGTERM, SIGINT) with live producers and tails (issue 9, item
11): exit status 0, one log line per stream left live, no traceback, and the
streams resumable at their offsets after a restart (SPEC §2, §4)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable

import httpx
import pytest

from tests.e2e.helpers import (
    RawConnection,
    numbered_lines,
    open_producer,
    request_head,
    unique_id,
    wait_for_offset,
)
from tests.server import ServerProcess


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_leaves_live_streams_resumable_with_one_line_each_and_exit_status_0(
    server_factory: Callable[..., ServerProcess], stop: signal.Signals
) -> None:
    server = server_factory()
    ids = [unique_id("stopped"), unique_id("stopped")]
    sent = {stream_id: numbered_lines(0, 50 + n) for n, stream_id in enumerate(ids)}
    connections: list[RawConnection] = []
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for stream_id in ids:
                conn, head = open_producer(server.port, f"/stream/{stream_id}")
                connections.append(conn)
                assert head.status == 201
                conn.send_chunk(sent[stream_id])
                wait_for_offset(http, stream_id, len(sent[stream_id]))
            tail = RawConnection(server.port)  # a live tail is open too
            connections.append(tail)
            tail.send(request_head("GET", f"/stream/{ids[0]}"))
            assert tail.read_head().status == 200
            assert tail.read_chunks_until(len(sent[ids[0]])) == sent[ids[0]]
        assert server.proc is not None
        stopping = len(server.log)
        server.proc.send_signal(stop)
        try:
            status = server.proc.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail("the server did not stop")
        server.stop()  # collects the rest of its log
    finally:
        for conn in connections:
            conn.close()
    log = server.log[stopping:]
    text = "".join(log)
    assert status == 0, text
    assert "Traceback" not in text and "CancelledError" not in text, text
    assert " ERROR " not in text, text
    left = [line for line in log if "stream_left_live" in line]
    assert len(left) == len(ids), text
    for stream_id in ids:
        expected = f"stream_left_live stream_id={stream_id} offset={len(sent[stream_id])}\n"
        assert sum(line.endswith(expected) for line in left) == 1, text

    server.start()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for stream_id in ids:
            head = http.head(f"/stream/{stream_id}")
            assert head.headers["x-stream-state"] == "live"
            offset = len(sent[stream_id])
            assert head.headers["upload-offset"] == str(offset)
            rest = numbered_lines(1000, 20)
            resumed = http.patch(
                f"/stream/{stream_id}",
                headers={"Upload-Offset": str(offset), "Upload-Complete": "?1"},
                content=rest,
            )
            assert resumed.status_code == 204, resumed.text
            final = http.get(f"/stream/{stream_id}")
            assert final.headers["x-stream-state"] == "complete"
            assert final.content == sent[stream_id] + rest
