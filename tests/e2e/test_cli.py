"""bin/stream as a subprocess against a real server (SPEC §9).

stdin is fed slowly from the test: a line is written, and the test waits until
a reader sees it before it writes more or closes stdin, which proves bytes
travel before EOF.
"""

from __future__ import annotations

import hashlib
import os
import pty
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.server import ServerProcess

BIN = Path(__file__).resolve().parents[2] / "bin" / "stream"
DEADLINE = 15.0


class Cli:
    """A running ``bin/stream`` with its stderr collected line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, tty: bool = False) -> None:
        environ = {k: v for k, v in os.environ.items() if k != "WEFT_TOKEN"}
        environ.update(env or {})
        # tty: stderr is a pseudo-terminal, as for a person at a terminal.
        master, slave = pty.openpty() if tty else (-1, -1)
        self.proc = subprocess.Popen(
            [sys.executable, str(BIN), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=slave if tty else subprocess.PIPE,
            env=environ,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self.stdout = b""
        self.terminal = bytearray()  # everything written to the pseudo-terminal
        assert self.proc.stdout is not None
        if tty:
            os.close(slave)
            reader = threading.Thread(target=self._read_terminal, args=(master,), daemon=True)
        else:
            assert self.proc.stderr is not None
            reader = threading.Thread(
                target=self._read_stderr, args=(self.proc.stderr,), daemon=True
            )
        self._threads = [
            reader,
            threading.Thread(target=self._read_stdout, args=(self.proc.stdout,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_terminal(self, master: int) -> None:
        try:
            while True:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the child closed its end
                    return
                if not data:
                    return
                self.terminal += data
                *complete, rest = self.terminal.split(b"\n")
                self.stderr = [line.decode() + "\n" for line in complete] + [rest.decode()]
                self._feed_lines(complete)
        finally:
            os.close(master)

    _taken = 0

    def _feed_lines(self, complete: list[bytes]) -> None:
        # Terminal lines carry the status line's \r redraws: a line is what
        # its last redraw left on screen.
        while self._taken < len(complete):
            line = complete[self._taken].decode().rstrip("\r")
            self.lines.put(line.rsplit("\r", 1)[-1].replace("\x1b[K", ""))
            self._taken += 1

    def _read_stderr(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode()
            self.stderr.append(line)
            self.lines.put(line.rstrip("\n"))

    def _read_stdout(self, stream: IO[bytes]) -> None:
        self.stdout = stream.read()

    def next_line(self, timeout: float = DEADLINE) -> str:
        return self.lines.get(timeout=timeout)

    def feed(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30.0) -> int:
        """Close stdin (unless the process already left) and wait for the exit status."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # it exited before reading everything (a refusal)
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        status = self.proc.wait(timeout)
        for thread in self._threads:
            thread.join(5)
        for stream in (self.proc.stdout, self.proc.stderr, self.proc.stdin):
            if stream is not None and not stream.closed:
                try:
                    stream.close()
                except BrokenPipeError:
                    pass
        return status

    @property
    def error_text(self) -> str:
        return "".join(self.stderr)


@pytest.fixture
def cli() -> Iterator[Callable[..., Cli]]:
    started: list[Cli] = []

    def run(*args: str, env: dict[str, str] | None = None, tty: bool = False) -> Cli:
        started.append(Cli(*args, env=env, tty=tty))
        return started[-1]

    yield run
    for proc in started:
        if proc.proc.poll() is None:
            proc.proc.kill()
        proc.wait(10)


def wait_for_content(
    client: httpx.Client, stream_id: str, expected: bytes, headers: dict[str, str] | None = None
) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        response = client.get(f"/stream/{stream_id}?notail", headers=headers)
        if response.status_code == 200 and response.content == expected:
            return
        time.sleep(0.02)
    raise AssertionError(f"stream {stream_id} never held {expected!r}")


def stored_size(client: httpx.Client, stream_id: str) -> int:
    try:
        response = client.head(f"/stream/{stream_id}")
    except httpx.TransportError:
        return -1
    return int(response.headers.get("upload-offset", -1))


def test_id_on_stderr_and_each_line_visible_before_eof(
    server: ServerProcess, client: httpx.Client, cli: Callable[..., Cli]
) -> None:
    proc = cli(server.url, "cli-live", "--metadata", '{"job": "lint", "build": 1}')
    proc.feed(b"")  # nothing written yet: the id must still come at once
    assert proc.next_line() == "cli-live"
    proc.feed(b"first line\n")
    wait_for_content(client, "cli-live", b"first line\n")
    assert client.head("/stream/cli-live").headers["x-stream-state"] == "live"
    proc.feed(b"second line\n")
    wait_for_content(client, "cli-live", b"first line\nsecond line\n")
    assert proc.finish() == 0, proc.error_text
    info = client.get("/streams/cli-live").json()
    assert info["state"] == "complete"
    assert info["size"] == len(b"first line\nsecond line\n")
    assert info["metadata"] == {"job": "lint", "build": 1}


def test_generated_id_meta_and_tee(
    server: ServerProcess, client: httpx.Client, cli: Callable[..., Cli]
) -> None:
    proc = cli(
        server.url, "--tee", "--metadata", '{"a": 1, "b": 2}', "--meta", "b=x", "--meta", "c="
    )
    stream_id = proc.next_line()
    proc.feed(b"tee me\n")
    wait_for_content(client, stream_id, b"tee me\n")
    assert proc.finish() == 0, proc.error_text
    assert proc.stdout == b"tee me\n"
    assert client.get(f"/streams/{stream_id}").json()["metadata"] == {"a": 1, "b": "x", "c": ""}


def test_taken_id_is_refused_at_once_and_force_replaces(
    server: ServerProcess, client: httpx.Client, cli: Callable[..., Cli]
) -> None:
    assert client.post("/stream/taken", content=b"old\n").status_code == 201
    refused = cli(server.url, "taken")
    # stdin stays open: a refusal must not wait for the end of the input.
    assert refused.wait(DEADLINE) != 0
    assert "already exists" in refused.error_text
    assert client.get("/stream/taken").content == b"old\n"

    forced = cli(server.url, "taken", "--force")  # Loom's form
    assert forced.next_line() == "taken"
    forced.feed(b"new\n")
    assert forced.finish() == 0, forced.error_text
    assert client.get("/stream/taken").content == b"new\n"


def test_token_from_flag_or_environment_and_401_without(
    server_factory: Callable[..., ServerProcess], cli: Callable[..., Cli]
) -> None:
    server = server_factory(tokens=["secret"])
    auth = {"Authorization": "Bearer secret"}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        by_flag = cli(server.url, "by-flag", "--token", "secret")
        by_env = cli(server.url, "by-env", env={"WEFT_TOKEN": "secret"})
        for proc, stream_id in ((by_flag, "by-flag"), (by_env, "by-env")):
            assert proc.next_line() == stream_id
            proc.feed(b"authorised\n")
            wait_for_content(client, stream_id, b"authorised\n", auth)
            assert proc.finish() == 0, proc.error_text

        anonymous = cli(server.url, "anon")
        assert anonymous.wait(DEADLINE) != 0
        assert "401" in anonymous.error_text
        assert "token" in anonymous.error_text.lower()
        assert "secret" not in anonymous.error_text
        assert client.head("/stream/anon", headers=auth).status_code == 404


def test_resumes_across_a_server_crash_with_identical_bytes(
    server: ServerProcess, client: httpx.Client, cli: Callable[..., Cli]
) -> None:
    data = random.Random(7).randbytes(20 * 1024 * 1024)
    proc = cli(server.url, "crash", "--min-delay", "0.2", "--max-delay", "1")
    assert proc.next_line() == "crash"
    fed = threading.Event()

    def feed_steadily() -> None:
        # About 8 MB/s: the crash lands in the middle of the input.
        block = 64 * 1024
        for start in range(0, len(data), block):
            proc.feed(data[start : start + block])
            time.sleep(0.008)
        fed.set()

    feeder = threading.Thread(target=feed_steadily, daemon=True)
    feeder.start()
    deadline = time.monotonic() + DEADLINE
    while stored_size(client, "crash") < 4 * 1024 * 1024:
        assert time.monotonic() < deadline, "the server never got 4 MiB"
        time.sleep(0.02)
    server.kill()
    assert not fed.is_set(), "the input ended before the crash; the test proves nothing"
    server.start()
    feeder.join(DEADLINE * 2)
    assert fed.is_set()
    assert proc.finish(40) == 0, proc.error_text
    assert "retry" in proc.error_text  # it did lose the connection
    stored = client.get("/stream/crash")
    assert stored.headers["x-stream-state"] == "complete"
    assert len(stored.content) == len(data)
    assert hashlib.sha256(stored.content).hexdigest() == hashlib.sha256(data).hexdigest()


def test_gives_up_with_status_1_when_the_server_stays_gone(
    server: ServerProcess, client: httpx.Client, cli: Callable[..., Cli]
) -> None:
    args = ("gone", "--retries", "2", "--min-delay", "0.05", "--max-delay", "0.1")
    proc = cli(server.url, *args)
    assert proc.next_line() == "gone"
    proc.feed(b"stored before the crash\n")
    wait_for_content(client, "gone", b"stored before the crash\n")
    server.kill()
    proc.feed(b"never stored\n")
    assert proc.finish(DEADLINE) == 1
    assert "Gave up after 2 retries" in proc.error_text


def live_stream_with(
    server: ServerProcess,
    client: httpx.Client,
    cli: Callable[..., Cli],
    stream_id: str,
    data: bytes,
) -> None:
    """A live stream holding ``data`` whose producer died (kill -9, no goodbye)."""
    proc = cli(server.url, stream_id)
    assert proc.next_line() == stream_id
    proc.feed(data)
    wait_for_content(client, stream_id, data)
    proc.proc.kill()
    proc.wait()
    assert client.head(f"/stream/{stream_id}").headers["x-stream-state"] == "live"


def test_only_the_id_on_stderr_when_it_is_not_a_terminal(
    server: ServerProcess, client: httpx.Client, cli: Callable[..., Cli]
) -> None:
    proc = cli(server.url, "plain")
    assert proc.next_line() == "plain"
    proc.feed(b"a line\n")
    wait_for_content(client, "plain", b"a line\n")
    assert proc.finish() == 0
    assert proc.error_text == "plain\n"


def test_flags_in_any_order(
    server: ServerProcess, client: httpx.Client, cli: Callable[..., Cli]
) -> None:
    assert client.post("/stream/anyorder", content=b"old\n").status_code == 201
    forced = cli(server.url, "--force", "anyorder", "--meta", "k=v")
    assert forced.next_line() == "anyorder"
    forced.feed(b"new\n")
    assert forced.finish() == 0, forced.error_text
    assert client.get("/stream/anyorder").content == b"new\n"

    first = cli("--meta", "job=x", server.url, "--tee", "flags-first")
    assert first.next_line() == "flags-first"
    assert first.finish() == 0, first.error_text
    assert client.get("/streams/flags-first").json()["metadata"] == {"job": "x"}


def test_interrupt_before_the_stream_exists_says_nothing_was_stored(
    server: ServerProcess, cli: Callable[..., Cli]
) -> None:
    server.kill()  # nothing answers: the stream is never created
    proc = cli(server.url, "never", "--min-delay", "0.05", "--max-delay", "0.1")
    assert "retrying" in proc.next_line()
    proc.proc.send_signal(signal.SIGINT)
    assert proc.wait(DEADLINE) == 130
    assert "resumable" not in proc.error_text
    assert "stays live" not in proc.error_text
    assert "before the server created the stream; nothing was stored" in proc.error_text


def test_interrupt_after_creation_says_how_to_resume(
    server: ServerProcess, client: httpx.Client, cli: Callable[..., Cli]
) -> None:
    proc = cli(server.url, "interrupted")
    assert proc.next_line() == "interrupted"
    proc.feed(b"kept\n")
    wait_for_content(client, "interrupted", b"kept\n")
    proc.proc.send_signal(signal.SIGINT)
    assert proc.wait(DEADLINE) == 130
    assert "stream interrupted stays live" in proc.error_text
    assert "--resume interrupted" in proc.error_text
    assert client.head("/stream/interrupted").headers["x-stream-state"] == "live"


def test_server_down_says_at_once_that_it_retries_and_why(
    server: ServerProcess, cli: Callable[..., Cli]
) -> None:
    server.kill()
    args = ("down", "--retries", "3", "--min-delay", "0.05", "--max-delay", "0.1")
    proc = cli(server.url, *args)
    first = proc.next_line()
    assert "cannot reach 127.0.0.1" in first and "Connection refused" in first
    assert "retrying in 0.05 s (up to 3 retries; Ctrl-C to stop)" in first
    assert proc.next_line().startswith("stream: retry 2/3 in 0.1 s: cannot reach")
    assert proc.finish(DEADLINE) == 1
    assert "Gave up after 3 retries" in proc.error_text


def test_a_replaced_producer_is_told_so(
    server: ServerProcess, client: httpx.Client, cli: Callable[..., Cli]
) -> None:
    proc = cli(server.url, "replaced")
    assert proc.next_line() == "replaced"
    proc.feed(b"mine\n")
    wait_for_content(client, "replaced", b"mine\n")
    assert client.post("/stream/replaced?force=true", content=b"theirs\n").status_code == 201
    proc.feed(b"more of mine\n")
    assert proc.wait(DEADLINE) == 1
    assert "replaced by another producer" in proc.error_text
    assert "does not exist" not in proc.error_text
    assert client.get("/stream/replaced").content == b"theirs\n"


def test_a_deleted_stream_is_told_so(
    server: ServerProcess, client: httpx.Client, cli: Callable[..., Cli]
) -> None:
    proc = cli(server.url, "deleted")
    assert proc.next_line() == "deleted"
    proc.feed(b"mine\n")
    wait_for_content(client, "deleted", b"mine\n")
    assert client.delete("/stream/deleted").status_code == 204
    proc.feed(b"more\n")
    assert proc.wait(DEADLINE) == 1
    assert "was deleted while it was being written" in proc.error_text


def test_resume_continues_a_live_stream_skipping_what_it_holds(
    server: ServerProcess, client: httpx.Client, cli: Callable[..., Cli]
) -> None:
    live_stream_with(server, client, cli, "again", b"first line\n")
    proc = cli(server.url, "--resume", "again", "--min-delay", "0.05", "--max-delay", "0.2")
    assert proc.next_line() == "again"
    proc.feed(b"first line\nsecond line\n")
    wait_for_content(client, "again", b"first line\nsecond line\n")
    assert proc.finish() == 0, proc.error_text
    assert client.get("/stream/again").content == b"first line\nsecond line\n"
    assert client.head("/stream/again").headers["x-stream-state"] == "complete"


def test_resume_refuses_a_finished_or_absent_stream_and_short_input(
    server: ServerProcess, client: httpx.Client, cli: Callable[..., Cli]
) -> None:
    assert client.post("/stream/done", content=b"all\n").status_code == 201
    finished = cli(server.url, "done", "--resume")
    assert finished.finish() == 1
    assert "cannot resume done: it is complete with 4 bytes" in finished.error_text

    absent = cli(server.url, "absent", "--resume")
    assert absent.finish() == 1
    assert "cannot resume absent: it does not exist" in absent.error_text

    live_stream_with(server, client, cli, "longer", b"0123456789\n")
    short = cli(server.url, "longer", "--resume", "--min-delay", "0.05")
    short.feed(b"0123")
    assert short.finish() == 1
    assert "stdin ended after 4 bytes, but the stream already holds 11" in short.error_text
    assert client.get("/stream/longer?notail").content == b"0123456789\n"


def test_progress_line_and_summary_on_a_terminal(
    server: ServerProcess, client: httpx.Client, cli: Callable[..., Cli]
) -> None:
    proc = cli(server.url, "on-tty", tty=True)
    assert proc.next_line() == "on-tty"
    proc.feed(b"hello terminal\n")
    wait_for_content(client, "on-tty", b"hello terminal\n")
    deadline = time.monotonic() + DEADLINE
    while b"15 B" not in proc.terminal:  # a redraw after the line was read
        assert time.monotonic() < deadline, bytes(proc.terminal)
        time.sleep(0.02)
    assert proc.finish() == 0
    screen = bytes(proc.terminal).decode()
    assert "\ron-tty  15 B  " in screen and " retries" in screen
    digest = hashlib.sha256(b"hello terminal\n").hexdigest()
    last = proc.stderr[-2].rstrip("\r\n").rsplit("\r", 1)[-1].replace("\x1b[K", "")
    assert last == (
        f"stream: on-tty complete, 15 B (15 bytes), sha256 {digest}, "
        f"{server.url}/stream/on-tty, viewer {server.url}/ui/stream/on-tty"
    )


def test_quiet_terminal_shows_only_the_id(
    server: ServerProcess, client: httpx.Client, cli: Callable[..., Cli]
) -> None:
    proc = cli(server.url, "quiet", "--quiet", tty=True)
    assert proc.next_line() == "quiet"
    proc.feed(b"hush\n")
    wait_for_content(client, "quiet", b"hush\n")
    assert proc.finish() == 0
    assert bytes(proc.terminal) == b"quiet\r\n"


def wait_for_link(client: httpx.Client, name: str, stream_id: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        response = client.get(f"/links/{name}")
        if response.status_code == 307 and response.headers["location"] == f"/stream/{stream_id}":
            return
        time.sleep(0.02)
    raise AssertionError(f"link {name} never pointed at {stream_id}")


def test_link_points_at_the_stream_as_soon_as_it_exists_and_follows_the_next_run(
    server: ServerProcess, client: httpx.Client, cli: Callable[..., Cli]
) -> None:
    first = cli(server.url, "--link", "lint-latest")
    first_id = first.next_line()
    wait_for_link(client, "lint-latest", first_id)  # stdin still open: the stream is live
    assert client.head(f"/stream/{first_id}").headers["x-stream-state"] == "live"
    first.feed(b"run 1\n")
    assert first.finish() == 0, first.error_text
    second = cli("--link", "lint-latest", server.url, "run-2")
    assert second.next_line() == "run-2"
    wait_for_link(client, "lint-latest", "run-2")
    second.feed(b"run 2\n")
    assert second.finish() == 0, second.error_text
    followed = client.get("/links/lint-latest", follow_redirects=True)
    assert followed.content == b"run 2\n"


def test_a_refused_link_fails_the_run_and_says_why(
    server: ServerProcess, client: httpx.Client, cli: Callable[..., Cli]
) -> None:
    proc = cli(server.url, "badlink", "--link", ".hidden")
    assert proc.next_line() == "badlink"
    proc.feed(b"kept\n")
    assert proc.finish() == 1
    assert "badlink is complete, but link .hidden: A link name is" in proc.error_text
    assert client.get("/stream/badlink").content == b"kept\n"
