"""``weft tail`` and ``weft ls`` as subprocesses against a real server.

The tail's stdout is collected as it arrives, so a test can wait until the
reader has printed a part before it restarts the server or appends more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import RawConnection, request_head, wait_for, wait_until_resumable
from tests.server import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 15.0
FAST_RETRIES = ("--retries", "50", "--min-delay", "0.05", "--max-delay", "0.3")


class Weft:
    """``python -m app SUBCOMMAND ...`` with stdout and stderr collected as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        environ = {k: v for k, v in os.environ.items() if k != "WEFT_TOKEN"}
        environ.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environ,
        )
        self.out = bytearray()
        self.err = bytearray()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _drain(stream: object, into: bytearray) -> None:
        while data := os.read(stream.fileno(), 65536):  # type: ignore[attr-defined]
            into += data

    def wait_output(self, expected: bytes) -> None:
        wait_for(lambda: bytes(self.out) == expected, f"stdout {expected!r}", DEADLINE)

    def wait(self, timeout: float = DEADLINE) -> int:
        status = self.proc.wait(timeout)
        for thread in self._threads:
            thread.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()
        return status


@pytest.fixture
def weft() -> Iterator[Callable[..., Weft]]:
    started: list[Weft] = []

    def run(*args: str, env: dict[str, str] | None = None) -> Weft:
        started.append(Weft(*args, env=env))
        return started[-1]

    yield run
    for proc in started:
        if proc.proc.poll() is None:
            proc.proc.kill()
        proc.wait(10)


def live(server: ServerProcess, client: httpx.Client, stream_id: str, data: bytes) -> None:
    """A live stream holding ``data`` whose producer has gone."""
    with RawConnection(server.port) as conn:
        conn.send(request_head("POST", f"/stream/{stream_id}", {"Transfer-Encoding": "chunked"}))
        assert conn.read_head().status == 201
        conn.send_chunk(data)
        wait_for(
            lambda: client.head(f"/stream/{stream_id}").headers["upload-offset"] == str(len(data)),
            "the first bytes",
        )
    wait_until_resumable(client, stream_id, len(data))


def append(client: httpx.Client, stream_id: str, offset: int, data: bytes, *, last: bool) -> None:
    headers = {"Upload-Offset": str(offset)}
    if last:
        headers["Upload-Complete"] = "?1"
    response = client.patch(f"/stream/{stream_id}", headers=headers, content=data)
    assert response.status_code == 204, response.text


def test_tail_follows_across_a_server_restart_exactly_once(
    server: ServerProcess, client: httpx.Client, weft: Callable[..., Weft]
) -> None:
    live(server, client, "followed", b"part one\n")
    reader = weft("tail", server.url, "followed", "--from-start", *FAST_RETRIES)
    reader.wait_output(b"part one\n")
    server.kill()
    server.start()
    with httpx.Client(base_url=server.url, timeout=10) as fresh:
        wait_until_resumable(fresh, "followed", 9)
        append(fresh, "followed", 9, b"part two\n", last=False)
        reader.wait_output(b"part one\npart two\n")
        append(fresh, "followed", 18, b"part three\n", last=True)
    assert reader.wait() == 0, reader.err.decode()
    assert bytes(reader.out) == b"part one\npart two\npart three\n"
    assert b"reconnecting in" in reader.err


def test_tail_replays_the_last_lines_or_from_an_offset(
    client: httpx.Client, server: ServerProcess, weft: Callable[..., Weft]
) -> None:
    data = b"".join(b"line %d\n" % n for n in range(1, 13))
    assert client.post("/stream/lines", content=data).status_code == 201
    default = weft("tail", server.url, "lines")
    assert default.wait() == 0
    assert bytes(default.out) == b"".join(b"line %d\n" % n for n in range(3, 13))
    two = weft("tail", server.url, "lines", "-n", "2")
    assert two.wait() == 0
    assert bytes(two.out) == b"line 11\nline 12\n"
    offset = weft("tail", "--offset", "5", server.url, "lines")
    assert offset.wait() == 0
    assert bytes(offset.out) == data[5:]
    beyond = weft("tail", server.url, "lines", "--offset", "1000")
    assert beyond.wait() == 1
    assert b"416" in beyond.err


def test_tail_exit_status_for_abandoned_deleted_and_absent(
    server_factory: Callable[..., ServerProcess], weft: Callable[..., Weft]
) -> None:
    server = server_factory(abandon_after=0.5)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        live(server, client, "left", b"half a job\n")
        abandoned = weft("tail", server.url, "left", "--from-start")
        assert abandoned.wait() == 3
        assert bytes(abandoned.out) == b"half a job\n"
        assert b"was abandoned" in abandoned.err

    server = server_factory()  # nothing is abandoned while the test deletes it
    with httpx.Client(base_url=server.url, timeout=10) as client:
        live(server, client, "removed", b"soon gone\n")
        deleted = weft("tail", server.url, "removed", "--from-start", *FAST_RETRIES)
        deleted.wait_output(b"soon gone\n")
        assert client.delete("/stream/removed").status_code == 204
        assert deleted.wait() == 4
        assert b"was deleted" in deleted.err

        absent = weft("tail", server.url, "nothing-here")
        assert absent.wait() == 4


def test_tail_token_from_flag_or_environment(
    server_factory: Callable[..., ServerProcess], weft: Callable[..., Weft]
) -> None:
    server = server_factory(tokens=["secret"])
    auth = {"Authorization": "Bearer secret"}
    with httpx.Client(base_url=server.url, timeout=10, headers=auth) as client:
        assert client.post("/stream/private", content=b"for you\n").status_code == 201
    by_flag = weft("tail", server.url, "private", "--token", "secret")
    by_env = weft("tail", server.url, "private", env={"WEFT_TOKEN": "secret"})
    anonymous = weft("tail", server.url, "private")
    assert by_flag.wait() == 0 and bytes(by_flag.out) == b"for you\n"
    assert by_env.wait() == 0 and bytes(by_env.out) == b"for you\n"
    assert anonymous.wait() == 1
    assert b"401" in anonymous.err


def test_ls_filters_and_formats(
    server: ServerProcess, client: httpx.Client, weft: Callable[..., Weft]
) -> None:
    for stream_id, meta in (("ls-a", '{"job": "lint"}'), ("ls-b", '{"job": "test"}')):
        response = client.post(
            f"/stream/{stream_id}", content=b"x\n", headers={"X-Stream-Metadata": meta}
        )
        assert response.status_code == 201
    live(server, client, "ls-live", b"running\n")

    as_array = weft("ls", server.url, "--json")
    assert as_array.wait() == 0
    assert [info["id"] for info in json.loads(as_array.out)] == ["ls-live", "ls-b", "ls-a"]

    only_live = weft("ls", server.url, "--state", "live", "--jsonl")
    assert only_live.wait() == 0
    lines = bytes(only_live.out).splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["ls-live"]

    by_meta = weft("ls", server.url, "--meta", "job=test", "--json")
    assert by_meta.wait() == 0
    assert [info["id"] for info in json.loads(by_meta.out)] == ["ls-b"]

    limited = weft("ls", server.url, "--limit", "2", "--json")
    assert limited.wait() == 0
    assert len(json.loads(limited.out)) == 2

    listing = weft("ls", server.url)
    assert listing.wait() == 0
    rows = bytes(listing.out).decode().splitlines()
    assert rows[0].split() == ["ID", "STATE", "SIZE", "AGE", "METADATA"]
    assert rows[1].split()[:4] == ["ls-live", "live", "8", "B"]
    assert rows[2].split()[:4] == ["ls-b", "complete", "2", "B"]
    assert rows[2].endswith('{"job":"test"}')

    bad = weft("ls", server.url, "--token", "x", "--prefix", "ls-", "--state", "live")
    assert bad.wait() == 0
