"""``GET /spy`` end to end: real producers writing chunk by chunk, a raw reader of the spy.

The helpers here (RawProducer, SpyClient, wait_until) are also used by the other
e2e files of this suite.
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import module_server
from tests.server import ServerProcess

ANSI = re.compile(r"\x1b\[[\d;]*m")
LINE_LIMIT = 4096


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_until(check: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll check() until it is true; fail after timeout."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def dechunk(data: bytes) -> bytes:
    """The body of a complete chunked transfer-coding."""
    out = bytearray()
    pos = 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += data[end + 2 : end + 2 + size]
        pos = end + 4 + size


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


class RawProducer:
    """``POST /stream/{id}`` with a chunked body sent piece by piece on a raw socket."""

    def __init__(
        self,
        port: int,
        stream_id: str = "",
        *,
        metadata: Any = None,
        query: str = "",
        token: str | None = None,
    ) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        lines = [
            f"POST /stream/{stream_id}{query} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Transfer-Encoding: chunked",
            "Connection: close",
        ]
        if metadata is not None:
            lines.append(f"X-Stream-Metadata: {json.dumps(metadata)}")
        if token is not None:
            lines.append(f"Authorization: Bearer {token}")
        self._sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self._buffer = b""
        while b"\r\n\r\n" not in self._buffer:
            data = self._sock.recv(65536)
            if not data:
                break
            self._buffer += data
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        self.status, self.headers = parse_head(head)
        self.id = self.headers.get("x-stream-id", stream_id)

    def send(self, data: bytes) -> None:
        self._sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))

    def finish(self) -> dict[str, Any]:
        """End the body and return the JSON the server answers with."""
        self._sock.sendall(b"0\r\n\r\n")
        while data := self._sock.recv(65536):
            self._buffer += data
        body = self._buffer
        if self.headers.get("transfer-encoding") == "chunked":
            body = dechunk(body)
        result: dict[str, Any] = json.loads(body)
        return result

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RawProducer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class SpyClient:
    """``GET /spy`` on a raw socket, decoding the chunked body as it arrives."""

    def __init__(self, port: int, query: str = "", token: str | None = None) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self._sock.sendall(
            f"GET /spy{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
            "Connection: close\r\n\r\n".encode()
        )
        self._raw = b""
        self.body = bytearray()
        self.ended = False
        while b"\r\n\r\n" not in self._raw:
            data = self._sock.recv(65536)
            if not data:
                raise AssertionError(f"spy closed before its head: {self._raw!r}")
            self._raw += data
        head, _, self._raw = self._raw.partition(b"\r\n\r\n")
        self.status, self.headers = parse_head(head)
        self.mark = 0

    def _decode(self) -> None:
        while True:
            end = self._raw.find(b"\r\n")
            if end < 0:
                return
            size = int(self._raw[:end].split(b";")[0], 16)
            if size == 0:
                self.ended = True
                return
            if len(self._raw) < end + 4 + size:
                return
            self.body += self._raw[end + 2 : end + 2 + size]
            self._raw = self._raw[end + 4 + size :]

    def _pump(self, timeout: float) -> None:
        self._sock.settimeout(max(timeout, 0.001))
        try:
            data = self._sock.recv(65536)
        except TimeoutError:
            return
        if not data:
            self.ended = True
        self._raw += data
        self._decode()

    def lines(self) -> list[str]:
        """Complete lines so far, as sent (colour codes included)."""
        return self.body.decode("utf-8", "replace").split("\n")[:-1]

    def plain(self) -> list[str]:
        return [ANSI.sub("", line) for line in self.lines()]

    def new_lines(self) -> list[str]:
        """Lines after the ones shown before sync()."""
        return self.lines()[self.mark :]

    def wait_for(self, check: Callable[[list[str]], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not check(self.plain()):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.ended:
                tail = self.lines()[-30:]
                raise AssertionError(f"spy output did not match in time; last lines: {tail!r}")
            self._pump(remaining)

    def wait_line(self, line: str, timeout: float = 5.0) -> None:
        self.wait_for(lambda lines: line in lines, timeout)

    def sync(self, http: httpx.Client, metadata: Any = None) -> None:
        """Return once the spy is surely subscribed: a stream created now is shown."""
        headers = {} if metadata is None else {"X-Stream-Metadata": json.dumps(metadata)}
        for _ in range(50):
            ready = unique("ready")
            assert http.post(f"/stream/{ready}", content=b"", headers=headers).status_code == 201
            try:
                self.wait_line(f"END: {ready}", timeout=0.3)
                self.mark = len(self.lines())
                return
            except AssertionError:
                continue
        raise AssertionError("the spy never showed a new stream")

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SpyClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def stored_size(http: httpx.Client, stream_id: str) -> int:
    return int(http.head(f"/stream/{stream_id}").headers["upload-offset"])


def from_line(lines: list[str], first: str) -> list[str]:
    return lines[lines.index(first) :]


@pytest.fixture(scope="module")
def spy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory.mktemp("spy"))


@pytest.fixture
def http(spy_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=spy_server.url, timeout=10) as client:
        yield client


@pytest.fixture
def spy(spy_server: ServerProcess, http: httpx.Client) -> Iterator[SpyClient]:
    with SpyClient(spy_server.port) as client:
        assert client.status == 200
        assert client.headers["content-type"].startswith("text/plain")
        client.sync(http)
        yield client


def test_spy_shows_start_header_lines_and_end_of_a_stream(
    spy_server: ServerProcess, spy: SpyClient
) -> None:
    a = unique("a")
    with RawProducer(spy_server.port, a) as producer:
        assert producer.status == 201
        producer.send(b"one\n")
        spy.wait_line("one")
        producer.send(b"two\n")
        assert producer.finish()["state"] == "complete"
    spy.wait_line(f"END: {a}")
    assert from_line(spy.lines(), f"START: {a}") == [
        f"START: {a}",
        f"{a}:",
        "one",
        "two",
        f"END: {a}",
    ]


def test_spy_repeats_id_line_only_when_another_stream_wrote_between(
    spy_server: ServerProcess, spy: SpyClient
) -> None:
    a, b = unique("a"), unique("b")
    with RawProducer(spy_server.port, a) as pa, RawProducer(spy_server.port, b) as pb:
        pa.send(b"a1\n")
        spy.wait_line("a1")
        pa.send(b"a2\n")
        spy.wait_line("a2")
        pb.send(b"b1\n")
        spy.wait_line("b1")
        pa.send(b"a3\n")
        spy.wait_line("a3")
        pa.finish()
        pb.finish()
    spy.wait_for(lambda lines: f"END: {a}" in lines and f"END: {b}" in lines)
    data = [line for line in spy.new_lines() if not line.startswith(("START: ", "END: "))]
    assert data == [f"{a}:", "a1", "a2", f"{b}:", "b1", f"{a}:", "a3"]


def test_spy_never_cuts_a_line_with_another_streams_bytes(
    spy_server: ServerProcess, spy: SpyClient, http: httpx.Client
) -> None:
    a, b = unique("a"), unique("b")
    with RawProducer(spy_server.port, a) as pa, RawProducer(spy_server.port, b) as pb:
        pa.send(b"hel")
        wait_until(lambda: stored_size(http, a) == 3, what="hel stored")
        pb.send(b"world\n")
        spy.wait_line("world")
        pa.send(b"lo\n")
        spy.wait_line("hello")
        pa.finish()
        pb.finish()
    data = [line for line in spy.new_lines() if not line.startswith(("START: ", "END: "))]
    assert data == [f"{b}:", "world", f"{a}:", "hello"]


def test_spy_emits_partial_line_longer_than_4k_in_4k_pieces(
    spy_server: ServerProcess, spy: SpyClient
) -> None:
    a = unique("a")
    with RawProducer(spy_server.port, a) as producer:
        producer.send(b"x" * 10000)
        spy.wait_for(lambda lines: lines.count("x" * LINE_LIMIT) == 2)
        assert "x" * (10000 - 2 * LINE_LIMIT) not in spy.lines()  # the rest is held back
        producer.finish()
    spy.wait_line(f"END: {a}")
    assert from_line(spy.lines(), f"{a}:")[1:] == [
        "x" * LINE_LIMIT,
        "x" * LINE_LIMIT,
        "x" * (10000 - 2 * LINE_LIMIT),
        f"END: {a}",
    ]


def test_spy_shows_new_stream_from_its_start_and_ends_partial_last_line_with_newline(
    spy: SpyClient, http: httpx.Client
) -> None:
    a = unique("a")
    assert http.post(f"/stream/{a}", content=b"first\nsecond\nno newline").status_code == 201
    spy.wait_line(f"END: {a}")
    assert from_line(spy.lines(), f"START: {a}") == [
        f"START: {a}",
        f"{a}:",
        "first",
        "second",
        "no newline",
        f"END: {a}",
    ]
    assert spy.body.endswith(f"no newline\nEND: {a}\n".encode())


def test_spy_shows_already_live_stream_from_current_end_and_replay_from_start(
    spy_server: ServerProcess, http: httpx.Client
) -> None:
    a = unique("a")
    with RawProducer(spy_server.port, a) as producer:
        producer.send(b"before\n")
        wait_until(lambda: stored_size(http, a) == 7, what="before stored")
        with (
            SpyClient(spy_server.port) as current,
            SpyClient(spy_server.port, "?replay") as replay,
        ):
            current.sync(http)
            replay.sync(http)
            producer.send(b"after\n")
            current.wait_line("after")
            replay.wait_line("after")
            assert f"START: {a}" in current.lines()
            assert "before" not in current.lines()
            replayed = [line for line in replay.lines() if "ready-" not in line]
            assert from_line(replayed, f"START: {a}")[:4] == [
                f"START: {a}",
                f"{a}:",
                "before",
                "after",
            ]
        producer.finish()


def test_spy_color_gives_each_live_stream_its_own_colour_and_bold_markers(
    spy_server: ServerProcess, http: httpx.Client
) -> None:
    a, b = unique("a"), unique("b")
    with SpyClient(spy_server.port, "?color") as spy:
        spy.sync(http)
        with RawProducer(spy_server.port, a) as pa, RawProducer(spy_server.port, b) as pb:
            pa.send(b"from a\n")
            spy.wait_line("from a")
            pb.send(b"from b\n")
            spy.wait_line("from b")
            pa.finish()
            pb.finish()
        spy.wait_for(lambda lines: f"END: {a}" in lines and f"END: {b}" in lines)
        text = spy.body.decode()
    colour_a = re.search(r"\x1b\[([\d;]+)mfrom a\x1b\[0m\n", text)
    colour_b = re.search(r"\x1b\[([\d;]+)mfrom b\x1b\[0m\n", text)
    assert colour_a and colour_b, text
    assert colour_a.group(1) != colour_b.group(1)
    for stream_id, colour in ((a, colour_a.group(1)), (b, colour_b.group(1))):
        for marker in (f"START: {stream_id}", f"{stream_id}:", f"END: {stream_id}"):
            assert f"\x1b[1;{colour}m{marker}\x1b[0m\n" in text


def test_spy_without_color_sends_no_escape_codes(spy: SpyClient, http: httpx.Client) -> None:
    a = unique("a")
    http.post(f"/stream/{a}", content=b"plain\n")
    spy.wait_line(f"END: {a}")
    assert b"\x1b" not in spy.body


def test_spy_meta_filter_shows_only_streams_with_that_value(
    spy_server: ServerProcess, http: httpx.Client
) -> None:
    build = uuid.uuid4().int % 10**9
    number, text, other, bare = unique("num"), unique("str"), unique("other"), unique("bare")
    with SpyClient(spy_server.port, f"?meta.build={build}") as spy:
        spy.sync(http, metadata={"build": build})
        for stream_id, metadata in (
            (other, {"build": build + 1}),
            (bare, None),
            (number, {"build": build}),
            (text, {"build": str(build)}),
        ):
            headers = {} if metadata is None else {"X-Stream-Metadata": json.dumps(metadata)}
            assert http.post(f"/stream/{stream_id}", content=b"x\n", headers=headers).is_success
        spy.wait_for(lambda lines: f"END: {number}" in lines and f"END: {text}" in lines)
        shown = "\n".join(spy.lines())
    assert other not in shown
    assert bare not in shown


def test_spy_ends_deleted_stream(
    spy_server: ServerProcess, spy: SpyClient, http: httpx.Client
) -> None:
    a = unique("a")
    with RawProducer(spy_server.port, a) as producer:
        producer.send(b"line\n")
        spy.wait_line("line")
        assert http.delete(f"/stream/{a}").status_code == 204
        spy.wait_line(f"END: {a}")


def test_spy_shows_stream_replaced_with_force_from_its_start(
    spy_server: ServerProcess, spy: SpyClient, http: httpx.Client
) -> None:
    a = unique("a")
    with RawProducer(spy_server.port, a) as producer:
        producer.send(b"old\n")
        spy.wait_line("old")
        replaced = http.post(f"/stream/{a}?force=true", content=b"new\n")
        assert replaced.headers.get("x-stream-replaced") == "true"
        spy.wait_line("new")
    lines = spy.new_lines()
    assert lines.index(f"END: {a}") < lines.index("new")
    assert lines.count(f"START: {a}") == 2
