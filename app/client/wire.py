"""One HTTP/1.1 request with a streamed body on its own socket, driven by hand.

httpx, like most clients, sends the whole request body before it reads the
response. A Weft producer must learn its stream id from the 201 that the server
sends *before* it reads the body, and must see an early refusal while it is
still sending, so the writer drives the socket itself. One thread does both
directions over a non-blocking socket and a selector (plus a wake-up pipe for
new data): an SSL socket must not be read and written from two threads at once.
"""

from __future__ import annotations

import http.client
import io
import os
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from typing import Protocol

from app.client.common import Endpoint
from app.client.errors import Retryable

MAX_HEAD = 64 * 1024
OUT_HIGH_WATER = 256 * 1024  # framed bytes queued for the socket before asking for more


class Connection:
    """A connected, non-blocking socket (TLS for https)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def open(cls, endpoint: Endpoint, timeout: float) -> Connection:
        try:
            sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        except OSError as exc:
            raise Retryable(f"cannot reach {endpoint.host_header}: {exc}") from exc
        try:
            # A lone line must leave now, not wait for Nagle to batch it.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A silent producer's connection may idle for hours: let the kernel
            # notice a peer that vanished without a reset.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
                if hasattr(socket, name):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
            if endpoint.tls:
                context = ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=endpoint.host)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise Retryable(f"cannot reach {endpoint.host_header}: {exc}") from exc
        return cls(sock)

    def send(self, data: memoryview) -> int:
        """Bytes the kernel took; 0 when it would block."""
        try:
            return self.sock.send(data)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0

    def recv(self) -> bytes | None:
        """Bytes read; b"" at end of stream; None when nothing is there yet."""
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        if data and isinstance(self.sock, ssl.SSLSocket):
            # Decrypted bytes already buffered inside OpenSSL never wake select().
            while self.sock.pending():
                data += self.sock.recv(self.sock.pending())
        return data

    def close(self) -> None:
        self.sock.close()


class ResponseParser:
    """An HTTP/1.1 response parsed incrementally: the head as soon as it is in,
    the body decoded (Content-Length, chunked or until close)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.status: int | None = None
        self.reason = ""
        self.headers = http.client.HTTPMessage()
        self.body = bytearray()
        self.complete = False
        self._mode = ""
        self._remaining = 0

    @property
    def head_done(self) -> bool:
        return self.status is not None

    def feed(self, data: bytes) -> None:
        self._buf += data
        while not self.complete and self._step():
            pass

    def feed_eof(self) -> None:
        """The peer closed: complete only when the body was delimited by the close."""
        if self._mode == "close":
            self.body += self._buf
            self._buf.clear()
            self.complete = True

    def _step(self) -> bool:
        """Consume what can be consumed; False when more bytes are needed."""
        if self.status is None:
            return self._parse_head()
        if self._mode == "length":
            take = min(self._remaining, len(self._buf))
            self.body += self._buf[:take]
            del self._buf[:take]
            self._remaining -= take
            self.complete = self._remaining == 0
            return False
        if self._mode == "close":
            self.body += self._buf
            self._buf.clear()
            return False
        return self._parse_chunk()

    def _parse_head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                raise Retryable("the server's response head is too large")
            return False
        status_line, _, rest = bytes(self._buf[: end + 2]).partition(b"\r\n")
        del self._buf[: end + 4]
        parts = status_line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise Retryable(f"not an HTTP response: {status_line[:80]!r}")
        status = int(parts[1])
        if 100 <= status < 200:
            return True  # an interim response: the real one follows
        self.status, self.reason = status, parts[2] if len(parts) > 2 else ""
        self.headers = http.client.parse_headers(io.BytesIO(rest + b"\r\n"))
        if status in (204, 304):
            self._mode, self.complete = "none", True
        elif "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._mode = "chunked"
        elif self.headers.get("content-length", "").isdigit():
            self._mode, self._remaining = "length", int(self.headers["content-length"])
            self.complete = self._remaining == 0
        else:
            self._mode = "close"
        return True

    def _parse_chunk(self) -> bool:
        if self._remaining:
            take = min(self._remaining, len(self._buf))
            self.body += self._buf[:take]
            del self._buf[:take]
            self._remaining -= take
            return self._remaining == 0 and bool(self._buf)
        line_end = self._buf.find(b"\r\n")
        if line_end < 0:
            return False
        line = bytes(self._buf[:line_end]).split(b";", 1)[0].strip()
        if line == b"":  # the CRLF that closes a chunk's data
            del self._buf[:2]
            return True
        try:
            size = int(line, 16)
        except ValueError as exc:
            raise Retryable(f"bad chunk size in the server's response: {line[:20]!r}") from exc
        if size == 0:
            trailer_end = self._buf.find(b"\r\n\r\n", line_end)
            if trailer_end < 0:
                return False
            del self._buf[: trailer_end + 4]
            self.complete = True
            return False
        del self._buf[: line_end + 2]
        self._remaining = size
        return True


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Cancelled(Exception):
    """The body's owner gave up (``BodySource.cancelled()``): drop the connection."""


class BodySource(Protocol):
    def cancelled(self) -> bool: ...

    def frames(self) -> tuple[bytes, bool, float | None]:
        """Chunk-framed bytes to send now, whether they end the body, and a
        monotonic time to ask again (None: wait for the wake-up pipe)."""
        ...


def exchange(
    conn: Connection,
    head: bytes,
    source: BodySource,
    *,
    wake_fd: int,
    on_head: Callable[[ResponseParser], bool],
    io_timeout: float,
) -> ResponseParser:
    """Send ``head`` and the source's frames while reading the response; return
    the complete response. ``on_head`` runs when the response head arrives and
    says whether to keep sending (a POST's early 201) or stop (anything else).
    A drop, a stall longer than ``io_timeout`` or a cut response raise Retryable."""
    out = bytearray(head)
    parser = ResponseParser()
    sending, body_done = True, False
    last_progress = time.monotonic()
    selector = selectors.DefaultSelector()
    selector.register(wake_fd, selectors.EVENT_READ, "wake")
    selector.register(conn.sock, selectors.EVENT_READ, "sock")
    try:
        while not parser.complete:
            if source.cancelled():
                raise Cancelled
            ask_again: float | None = None
            if sending and not body_done and len(out) < OUT_HIGH_WATER:
                frames, body_done, ask_again = source.frames()
                out += frames
            want_write = sending and bool(out)
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            selector.modify(conn.sock, events, "sock")
            now = time.monotonic()
            waiting_on_server = want_write or (body_done and not out)
            timeout = ask_again - now if ask_again is not None else None
            if waiting_on_server:
                stall = last_progress + io_timeout - now
                timeout = stall if timeout is None else min(timeout, stall)
            ready = selector.select(None if timeout is None else max(timeout, 0.0))
            if not ready and waiting_on_server and time.monotonic() - last_progress > io_timeout:
                raise Retryable(f"the server made no progress for {io_timeout:g} s")
            for key, mask in ready:
                if key.data == "wake":
                    _drain(wake_fd)
                    continue
                if mask & selectors.EVENT_READ:
                    data = conn.recv()
                    if data == b"":
                        parser.feed_eof()
                        if not parser.complete:
                            raise Retryable("the server closed the connection")
                    elif data:
                        last_progress = time.monotonic()
                        had_head = parser.head_done
                        parser.feed(data)
                        if parser.head_done and not had_head:
                            sending = on_head(parser) and sending
                if mask & selectors.EVENT_WRITE and sending and out:
                    try:
                        sent = conn.send(memoryview(out))
                    except OSError:
                        # The server may have answered and closed (a refusal):
                        # stop sending and read what it said.
                        sending = False
                        continue
                    if sent:
                        del out[:sent]
                        last_progress = time.monotonic()
        return parser
    except OSError as exc:
        raise Retryable(f"connection lost: {exc}") from exc
    finally:
        selector.close()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
