"""GET /events: Server-Sent Events of the stream lifecycle (SPEC §5)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.server import ServerProcess


class SseReader:
    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.iter_lines()

    def next_event(self) -> dict[str, str]:
        """The next event's fields (comments skipped)."""
        fields: dict[str, str] = {}
        for line in self._lines:
            if line == "":
                if fields:
                    return fields
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        raise AssertionError("event stream ended")


@contextmanager
def events(
    server: ServerProcess, path: str = "/events", headers: dict[str, str] | None = None
) -> Iterator[SseReader]:
    with (
        httpx.Client(base_url=server.url, timeout=10) as http,
        http.stream("GET", path, headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(response)
        yield reader


def test_events_report_created_completed_and_deleted_with_info(
    server: ServerProcess, client: httpx.Client
) -> None:
    with events(server) as sse:
        client.post("/stream/ev1", content=b"hello", headers={"X-Stream-Metadata": '{"k": 1}'})
        created = sse.next_event()
        completed = sse.next_event()
        client.delete("/stream/ev1")
        deleted = sse.next_event()
    assert [created["event"], completed["event"], deleted["event"]] == [
        "created",
        "completed",
        "deleted",
    ]
    assert int(created["id"]) < int(completed["id"]) < int(deleted["id"])
    info = json.loads(completed["data"])
    assert info["id"] == "ev1"
    assert info["state"] == "complete"
    assert info["size"] == 5
    assert info["metadata"] == {"k": 1}
    assert json.loads(created["data"])["state"] == "live"


def test_events_report_abandoned(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(abandon_after=0.5)
    with events(server) as sse:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"POST /stream/gone HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert sse.next_event()["event"] == "created"
        sock.close()
        abandoned = sse.next_event()
    assert abandoned["event"] == "abandoned"
    assert json.loads(abandoned["data"])["state"] == "abandoned"


def test_last_event_id_resumes_after_the_given_event(
    server: ServerProcess, client: httpx.Client
) -> None:
    with events(server) as sse:
        for n in range(3):
            client.post(f"/stream/r{n}", content=b"x")
        seen = [sse.next_event() for _ in range(6)]
    resume_after = seen[1]["id"]  # r0 completed
    with events(server, headers={"Last-Event-ID": resume_after}) as sse:
        replayed = [sse.next_event() for _ in range(4)]
    assert [(e["event"], json.loads(e["data"])["id"]) for e in replayed] == [
        ("created", "r1"),
        ("completed", "r1"),
        ("created", "r2"),
        ("completed", "r2"),
    ]
    assert [e["id"] for e in replayed] == [e["id"] for e in seen[2:]]


def test_events_filter_by_metadata(server: ServerProcess, client: httpx.Client) -> None:
    with events(server, "/events?meta.team=web") as sse:
        client.post("/stream/f1", content=b"x", headers={"X-Stream-Metadata": '{"team":"db"}'})
        client.post("/stream/f2", content=b"x", headers={"X-Stream-Metadata": '{"team":"web"}'})
        first = sse.next_event()
    assert json.loads(first["data"])["id"] == "f2"


def test_events_send_a_comment_first_so_proxies_see_bytes(server: ServerProcess) -> None:
    started = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        with http.stream("GET", "/events") as response:
            first = next(response.iter_lines())
    assert first.startswith(":")
    assert time.monotonic() - started < 5
