"""Shared pieces of the producing, consuming and resuming end-to-end tests.

``RawConnection`` speaks HTTP/1.1 over a plain socket so a test can control
exactly when each byte goes out and observe exactly when each byte comes back
(an httpx client sends a whole request before it reads the response).
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.server import ServerProcess

T = TypeVar("T")
TIMEOUT = 10.0


def module_server(workdir: Path, **config: Any) -> Iterator[ServerProcess]:
    """A server shared by the tests of one module (each test uses its own stream ids)."""
    server = ServerProcess(workdir, config).start()
    try:
        yield server
    finally:
        server.stop()


def unique_id(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def repr_digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


def summary(stream_id: str, data: bytes) -> dict[str, Any]:
    """The JSON body a POST ends with when its stream completes."""
    return {"id": stream_id, "size": len(data), "sha256": sha256_hex(data), "state": "complete"}


def numbered_lines(first: int, count: int) -> bytes:
    return b"".join(b"line %06d of a numbered stream\n" % n for n in range(first, first + count))


def wait_for(
    probe: Callable[[], T | None], what: str, timeout: float = TIMEOUT, interval: float = 0.02
) -> T:
    """Poll probe until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def upload_offset(client: httpx.Client, stream_id: str) -> int | None:
    head = client.head(f"/stream/{stream_id}")
    if head.status_code != 200:
        return None
    return int(head.headers["upload-offset"])


def wait_for_offset(client: httpx.Client, stream_id: str, size: int) -> None:
    """Poll HEAD until the stream's Upload-Offset is exactly size."""
    wait_for(lambda: upload_offset(client, stream_id) == size, f"Upload-Offset {size}")


def wait_until_resumable(client: httpx.Client, stream_id: str, offset: int) -> None:
    """Wait until the server has let go of a dropped producer: an empty PATCH at
    the stream's offset is then accepted (while the old producer is still
    attached, the server refuses a second one with 409)."""

    def attached() -> bool:
        response = client.patch(
            f"/stream/{stream_id}", headers={"Upload-Offset": str(offset)}, content=b""
        )
        assert response.status_code in (204, 409), response.text
        return response.status_code == 204

    wait_for(attached, "the dropped producer to be released")


def get_bytes(client: httpx.Client, stream_id: str) -> bytes:
    """What is stored now, live or not."""
    response = client.get(f"/stream/{stream_id}", params={"notail": "true"})
    assert response.status_code == 200, response.text
    return response.content


def assert_json_error(response: httpx.Response, status: int) -> str:
    """The response is ``{"error": "<message>"}`` with status; return the message."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"]
    assert isinstance(body["error"], str) and body["error"]
    return str(body["error"])


# -- raw HTTP/1.1 -------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name.lower():
                return value
        return None

    def names(self) -> set[str]:
        return {key for key, _ in self.headers}

    @property
    def chunked(self) -> bool:
        return (self.header("transfer-encoding") or "").lower() == "chunked"


def request_head(
    method: str,
    path: str,
    headers: Mapping[str, str | bytes] | None = None,
    *,
    chunked: bool = False,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
    for name, value in (headers or {}).items():
        raw = value if isinstance(value, bytes) else value.encode()
        lines.append(name.encode() + b": " + raw)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class RawConnection:
    """One HTTP/1.1 connection driven byte by byte."""

    def __init__(self, port: int, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.buffer = b""

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    # sending

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_chunk(self, data: bytes) -> None:
        assert data, "an empty chunk would end the body"
        self.sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")

    def end_chunks(self) -> None:
        self.sock.sendall(b"0\r\n\r\n")

    # receiving

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.buffer += data

    def _read_until(self, delimiter: bytes) -> bytes:
        while delimiter not in self.buffer:
            self._fill()
        found, self.buffer = self.buffer.split(delimiter, 1)
        return found

    def _read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        found, self.buffer = self.buffer[:size], self.buffer[size:]
        return found

    def read_head(self) -> RawResponse:
        """The next response head (an interim 1xx one included)."""
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *lines = head.split("\r\n")
        version, status, *reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers = []
        for line in lines:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        return RawResponse(int(status), reason[0] if reason else "", headers)

    def read_chunk(self) -> bytes:
        """The next chunk of a chunked body; b"" for the last one."""
        size_line = self._read_until(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            while self._read_until(b"\r\n"):  # trailers end with an empty line
                pass
            return b""
        data = self._read_exact(size)
        assert self._read_exact(2) == b"\r\n"
        return data

    def read_chunks_until(self, size: int) -> bytes:
        """Chunks until at least size bytes of body arrived."""
        received = b""
        while len(received) < size:
            chunk = self.read_chunk()
            if not chunk:
                raise AssertionError(f"body ended after {len(received)} of {size} bytes")
            received += chunk
        return received

    def read_body(self, head: RawResponse) -> bytes:
        if head.chunked:
            parts = []
            while chunk := self.read_chunk():
                parts.append(chunk)
            return b"".join(parts)
        length = head.header("content-length")
        if length is not None:
            return self._read_exact(int(length))
        return self.read_until_close()

    def read_response(self) -> tuple[RawResponse, bytes]:
        head = self.read_head()
        return head, self.read_body(head)

    def read_until_close(self) -> bytes:
        while True:
            try:
                self._fill()
            except EOFError:
                break
        data, self.buffer = self.buffer, b""
        return data

    def assert_silent(self, seconds: float) -> None:
        """Nothing arrives, and the connection stays open, for the given time."""
        assert self.buffer == b"", self.buffer
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        finally:
            self.sock.settimeout(self.timeout)
        if data:
            raise AssertionError(f"unexpected bytes while silent: {data[:80]!r}")
        raise AssertionError("the server closed the connection while the stream was silent")


def open_producer(
    port: int,
    path: str,
    headers: Mapping[str, str | bytes] | None = None,
) -> tuple[RawConnection, RawResponse]:
    """POST with a chunked body of which nothing is sent yet; return the
    connection and the response head, which must arrive before any body byte."""
    conn = RawConnection(port)
    try:
        conn.send(request_head("POST", path, headers, chunked=True))
        head = conn.read_head()
    except BaseException:
        conn.close()
        raise
    return conn, head


def finish_producer(conn: RawConnection) -> dict[str, Any]:
    """Send the last chunk and return the POST's JSON response body."""
    conn.end_chunks()
    body = b""
    while chunk := conn.read_chunk():
        body += chunk
    result: dict[str, Any] = json.loads(body)
    return result


def make_dropped_stream(client: httpx.Client, port: int, stream_id: str, data: bytes) -> None:
    """A live stream holding data whose producer went away mid-body."""
    conn, head = open_producer(port, f"/stream/{stream_id}")
    with conn:
        assert head.status == 201
        if data:
            conn.send_chunk(data)
        wait_for_offset(client, stream_id, len(data))
