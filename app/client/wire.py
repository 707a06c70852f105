"""One HTTP/1.1 request with a streamed body on its own socket, driven by hand.

httpx, like most clients, sends the whole request body before it reads the
response. A Weft producer must learn its stream id from the 201 that the server
sends *before* it reads the body, and must see an early refusal while it is
still sending, so the writer drives the socket itself. One thread does both
directions over a non-blocking socket and a selector (plus a wake-up pipe for
new data): an SSL socket must not be read and written from two threads at once.

It needs nothing beyond the standard library's sockets (no httpx, no
http.client): ``bin/stream`` imports only this path, so it starts in a
fraction of the time an HTTP client library's imports take.
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from app.client.common import Endpoint, HeadInfo, head_info
from app.client.errors import Retryable

MAX_HEAD = 64 * 1024
OUT_HIGH_WATER = 256 * 1024  # framed bytes queued for the socket before asking for more
MAX_IOV = 64  # buffers per sendmsg (the kernel takes up to 1024)


class Connection:
    """A connected, non-blocking socket (TLS for https)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # What a non-blocking send or recv raises when it would block (TLS adds its own).
        self.would_block: tuple[type[OSError], ...] = (BlockingIOError,)

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
                import ssl  # only https needs it (~10 ms of imports)

                context = ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=endpoint.host)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise Retryable(f"cannot reach {endpoint.host_header}: {exc}") from exc
        connection = cls(sock)
        if endpoint.tls:
            connection.would_block = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
        return connection

    def send(self, buffers: Sequence[bytes | memoryview]) -> int:
        """Bytes the kernel took from the buffers, in order; 0 when it would block."""
        try:
            if self.would_block == (BlockingIOError,):  # plain TCP: one gathered write
                return self.sock.sendmsg(buffers[:MAX_IOV])
            return self.sock.send(buffers[0])  # an SSL socket has no sendmsg
        except self.would_block:
            return 0

    def recv(self) -> bytes | None:
        """Bytes read; b"" at end of stream; None when nothing is there yet."""
        try:
            data = self.sock.recv(65536)
        except self.would_block:
            return None
        pending = getattr(self.sock, "pending", None)
        if data and pending is not None:
            # Decrypted bytes already buffered inside OpenSSL never wake select().
            while pending():
                data += self.sock.recv(pending())
        return data

    def close(self) -> None:
        self.sock.close()


def parse_headers(block: bytes) -> dict[str, str]:
    """Header lines (no status line) as a dict keyed by lower-case name; a
    repeated header's values are joined with ", " (RFC 9110 §5.3)."""
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


class ResponseParser:
    """An HTTP/1.1 response parsed incrementally: the head as soon as it is in,
    the body decoded (Content-Length, chunked or until close). An answer to
    HEAD has no body whatever its Content-Length says (``head_only``)."""

    def __init__(self, *, head_only: bool = False) -> None:
        self._buf = bytearray()
        self._head_only = head_only
        self.status: int | None = None
        self.reason = ""
        self.headers: dict[str, str] = {}
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
        self.headers = parse_headers(rest)
        if status in (204, 304) or self._head_only:
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

    def frames(self) -> tuple[list[bytes | memoryview], bool, float | None]:
        """Chunk-framed bytes to send now (views that stay valid until sent),
        whether they end the body, and a monotonic time to ask again (None:
        wait for the wake-up pipe)."""
        ...


class Outbox:
    """Buffers queued for the socket, sent without being copied together."""

    def __init__(self, first: bytes) -> None:
        self.buffers: deque[bytes | memoryview] = deque([first])
        self.size = len(first)

    def extend(self, buffers: list[bytes | memoryview]) -> None:
        for buffer in buffers:
            if len(buffer):
                self.buffers.append(buffer)
                self.size += len(buffer)

    def send(self, conn: Connection) -> int:
        count = min(len(self.buffers), MAX_IOV)
        sent = conn.send([self.buffers[i] for i in range(count)])
        self.size -= sent
        left = sent
        while left:
            head = self.buffers[0]
            if len(head) > left:
                self.buffers[0] = memoryview(head)[left:]
                break
            left -= len(head)
            self.buffers.popleft()
        return sent


def exchange(
    conn: Connection,
    head: bytes,
    source: BodySource,
    *,
    wake_fd: int,
    on_head: Callable[[ResponseParser], bool],
    io_timeout: float,
    enough: Callable[[ResponseParser], bool] = lambda _response: False,
    parser: ResponseParser | None = None,
) -> ResponseParser:
    """Send ``head`` and the source's frames while reading the response; return
    the complete response. ``on_head`` runs when the response head arrives and
    says whether to keep sending (a POST's early 201) or stop (anything else).
    ``enough`` may end the exchange early, once the response holds what the
    caller needs (the first bytes of an endless body).
    A drop, a stall longer than ``io_timeout`` or a cut response raise Retryable."""
    out = Outbox(head)
    parser = ResponseParser() if parser is None else parser
    sending, body_done = True, False
    last_progress = time.monotonic()
    selector = selectors.DefaultSelector()
    selector.register(wake_fd, selectors.EVENT_READ, "wake")
    events = selectors.EVENT_READ
    selector.register(conn.sock, events, "sock")
    try:
        while not parser.complete and not (parser.head_done and enough(parser)):
            if source.cancelled():
                raise Cancelled
            ask_again: float | None = None
            if sending and not body_done and out.size < OUT_HIGH_WATER:
                frames, body_done, ask_again = source.frames()
                out.extend(frames)
            want_write = sending and out.size > 0
            wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            if wanted != events:
                events = wanted
                selector.modify(conn.sock, events, "sock")
            now = time.monotonic()
            waiting_on_server = want_write or (body_done and not out.size)
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
                if mask & selectors.EVENT_WRITE and sending and out.size:
                    try:
                        sent = out.send(conn)
                    except OSError:
                        # The server may have answered and closed (a refusal):
                        # stop sending and read what it said.
                        sending = False
                        continue
                    if sent:
                        last_progress = time.monotonic()
        return parser
    except OSError as exc:
        raise Retryable(f"connection lost: {exc}") from exc
    finally:
        selector.close()


class FixedBody:
    """A request body known in advance (or none), sent as it is."""

    def __init__(self, body: bytes = b"") -> None:
        self._body: bytes | None = body

    def cancelled(self) -> bool:
        return False

    def frames(self) -> tuple[list[bytes | memoryview], bool, float | None]:
        body, self._body = self._body, None
        return [body] if body else [], True, None


def request(
    endpoint: Endpoint,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    body: bytes = b"",
    timeout: float = 30.0,
    enough: Callable[[ResponseParser], bool] = lambda _response: False,
) -> ResponseParser:
    """One request on a connection of its own, the whole response read (or as
    much as ``enough`` wants). Raises Retryable when the server cannot be
    reached or the exchange breaks off."""
    fields = endpoint.headers()
    fields["Host"] = endpoint.host_header
    fields["Connection"] = "close"
    if body or method in ("POST", "PUT", "PATCH"):
        fields["Content-Length"] = str(len(body))
    fields.update(headers or {})
    conn = Connection.open(endpoint, timeout)
    wake_r, wake_w = os.pipe()  # nothing wakes a fixed body; exchange wants the fd
    try:
        parser = ResponseParser(head_only=method == "HEAD")
        return exchange(
            conn,
            request_head(method, path, fields),
            FixedBody(body),
            wake_fd=wake_r,
            on_head=lambda _response: True,
            io_timeout=timeout,
            enough=enough,
            parser=parser,
        )
    finally:
        conn.close()
        os.close(wake_r)
        os.close(wake_w)


def head(endpoint: Endpoint, stream_id: str, timeout: float = 30.0) -> HeadInfo:
    """``HEAD /stream/{id}``: raise StreamRefused or Retryable, else its HeadInfo."""
    response = request(endpoint, "HEAD", endpoint.path(stream_id), timeout=timeout)
    return head_info(response.status or 0, response.headers, bytes(response.body), response.reason)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
