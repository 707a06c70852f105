"""uvicorn's httptools protocol with Weft's edge rules: errors of the HTTP
parser are JSON like every other error (SPEC §7), a request head larger than
``limits.header_bytes`` is refused (httptools itself has no limit), so is a
transfer coding other than chunked (501), and the two HTTP timeouts of
SPEC §8 (``http.header_timeout``, ``http.send_timeout``). It also spares the
ingest path two copies of every body byte, and lets a response be cut
(``CUT_EXTENSION``)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import socket
import struct
import termios
from typing import Any, cast

from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from app.config import Http

DEFAULT_HEAD_LIMIT = 64 * 1024
# How often a connection's send progress is looked at, as a part of send_timeout:
# a stalled client is cut between 3/4 and 5/4 of the timeout.
CHECKS_PER_TIMEOUT = 4
MAX_CHECK_INTERVAL = 5.0
# Seconds a request still running at a server stop has to finish before its
# connection is cut (uvicorn's timeout_graceful_shutdown must be longer).
SHUTDOWN_GRACE = 2

log = logging.getLogger("weft.http")

# scope["extensions"][CUT_EXTENSION](): close the connection in the middle of a
# response body, quietly. An app that just stops sending gets the same close,
# but with an error line and a traceback from uvicorn for every such response.
CUT_EXTENSION = "weft.cut"


class HeadTooLarge(Exception):
    pass


class UnknownCoding(Exception):
    pass


def kernel_unsent(fd: int) -> int:
    """Bytes in the socket's kernel send queue that the peer has not acknowledged
    (Linux ``SIOCOUTQ``); 0 where that cannot be asked."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * 4))[0])
    except OSError:
        return 0


class MeteredTransport(asyncio.Transport):
    """The connection's transport, counting the bytes written to it: the bytes
    written minus those still buffered (ours and the kernel's) are the bytes the
    client has taken, the one measure of progress that holds for any write pattern."""

    def __init__(self, inner: asyncio.Transport) -> None:
        super().__init__()
        self.inner = inner
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)
        self.inner.write(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        self.inner.write_eof()

    def can_write_eof(self) -> bool:
        return self.inner.can_write_eof()

    def abort(self) -> None:
        self.inner.abort()

    def close(self) -> None:
        self.inner.close()

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.inner.get_protocol()

    def is_reading(self) -> bool:
        return self.inner.is_reading()

    def pause_reading(self) -> None:
        self.inner.pause_reading()

    def resume_reading(self) -> None:
        self.inner.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.inner.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.inner.set_write_buffer_limits(high, low)


class WeftHttpProtocol(HttpToolsProtocol):
    header_timeout = 30.0
    send_timeout = 300.0

    @classmethod
    def configured(cls, http: Http) -> type[WeftHttpProtocol]:
        """The protocol class uvicorn instantiates per connection, with the timeouts."""
        attrs = {"header_timeout": http.header_timeout, "send_timeout": http.send_timeout}
        return cast("type[WeftHttpProtocol]", type(cls.__name__, (cls,), attrs))

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._head_limit = config.h11_max_incomplete_event_size or DEFAULT_HEAD_LIMIT
        self._head_bytes = 0
        self._head_too_large = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_begun = False  # a byte of the next request has arrived
        self._send_timer: asyncio.TimerHandle | None = None
        self._stop_timer: asyncio.TimerHandle | None = None
        self._check_interval = min(self.send_timeout / CHECKS_PER_TIMEOUT, MAX_CHECK_INTERVAL)
        self._meter: MeteredTransport | None = None
        self._fd = -1
        self._taken = 0  # bytes the client has taken, as of the last check
        self._progress_at = 0.0  # when the client last took a byte or had none waiting

    # -- the two timeouts ----------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._meter = MeteredTransport(transport)
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1
        super().connection_made(self._meter)
        self._progress_at = self.loop.time()
        self._arm_head_timer()
        self._send_timer = self.loop.call_later(self._check_interval, self._check_send)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._send_timer, self._stop_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._send_timer = self._stop_timer = None
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """A server stop. A producer's body and an open-ended (chunked) response
        may never end, so they are cut at once, as a client's disconnect would
        (the stream stays live and resumable); anything else has SHUTDOWN_GRACE
        seconds to finish. Either way the request's task ends on the disconnect
        instead of being cancelled with a traceback."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete or cycle.more_body or cycle.chunked_encoding:
            self.transport.close()
        else:
            cycle.keep_alive = False
        assert self._meter is not None
        self._stop_timer = self.loop.call_later(SHUTDOWN_GRACE, self._meter.abort)

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def on_headers_complete(self) -> None:
        if self._unknown_coding():
            # Before the request reaches the app, so nothing is created or stored.
            raise UnknownCoding  # the parser turns this into HttpParserCallbackError
        # A body may then pause for any time: only the head has a deadline.
        self._head_begun = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # The next request's head is due from now on, unless it is already queued.
        waiting = not self.pipeline
        super().on_response_complete()
        if waiting and not self.transport.is_closing():
            self._arm_head_timer()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or (self.cycle and not self.cycle.response_complete):
            return
        assert self._meter is not None
        if not self._head_begun and self._meter.written:
            # Idle after a response, like uvicorn's keep-alive timeout: a 408 there
            # would read as the answer to the client's next request.
            self.transport.close()
            return
        log.info("header_timeout client=%s", _peer(self.client))
        self._send_error(
            408, f"The request head did not arrive within {self.header_timeout:g} seconds."
        )

    def _check_send(self) -> None:
        """Cut the connection when bytes have been waiting for the client for
        send_timeout seconds and it took none of them. Nothing waiting (a silent
        tail, a producer's paused body, an idle keep-alive) is never a stall."""
        assert self._meter is not None
        now = self.loop.time()
        written = self._meter.written
        if written == self._taken:
            self._progress_at = now
        else:
            pending = self._meter.get_write_buffer_size()
            # A closing transport with an empty buffer has handed its socket back.
            if pending or not self._meter.is_closing():
                pending += kernel_unsent(self._fd)
            taken = written - pending
            if pending == 0 or taken > self._taken:
                self._taken = taken
                self._progress_at = now
            elif now - self._progress_at >= self.send_timeout:
                log.info(
                    "send_timeout client=%s unsent_bytes=%d idle_s=%.1f",
                    _peer(self.client),
                    pending,
                    now - self._progress_at,
                )
                self._send_timer = None
                self._reset()
                return
        self._send_timer = self.loop.call_later(self._check_interval, self._check_send)

    def _reset(self) -> None:
        """Abort with a TCP reset, so the kernel drops its queue of unsent bytes
        too instead of keeping them for a client that takes nothing."""
        assert self._meter is not None
        sock = self._meter.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self._meter.abort()

    # -- the request head limit and JSON parser errors ------------------------------

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        def cut() -> None:
            cycle.disconnected = True  # so the cycle neither sends more nor complains
            self.transport.close()

        extensions: dict[str, Any] = cycle.scope.setdefault("extensions", {})
        extensions[CUT_EXTENSION] = cut
        super()._start_asgi_task(cycle, app)

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        self._head_begun = True
        super().on_message_begin()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._head_limit:
            self._head_too_large = True
            raise HeadTooLarge  # the parser turns this into HttpParserCallbackError

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_body(self, body: bytes) -> None:
        # uvicorn appends every piece to a bytearray and receive() copies that
        # into bytes: two copies of each body byte. Keeping a lone piece as the
        # bytes object it is makes receive()'s bytes() a no-op.
        cycle = self.cycle
        if cycle.body or cycle.response_complete or self.parser.should_upgrade():
            if isinstance(cycle.body, bytes):
                cycle.body = bytearray(cycle.body)
            super().on_body(body)
            return
        cycle.body = body  # type: ignore[assignment]
        if len(body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def _unknown_coding(self) -> bool:
        """A transfer coding other than chunked (``gzip, chunked``, ``gzip``):
        httptools would pass a gzip body on undecoded, as if it were the stream."""
        for name, value in self.headers or ():
            if name == b"transfer-encoding":
                codings = (c.strip().lower() for c in value.split(b","))
                if any(c and c != b"chunked" for c in codings):
                    return True
        return False

    def send_400_response(self, msg: str) -> None:
        if self._unknown_coding():
            self._send_error(
                501,
                "No transfer coding but chunked is supported: send the body as it is, "
                "chunked or with a Content-Length.",
            )
        elif self._head_too_large:
            self._send_error(431, f"The request head is larger than {self._head_limit} bytes.")
        else:
            self._send_error(400, "The request is not valid HTTP/1.1.")

    def _send_error(self, status: int, text: str) -> None:
        """Answer outside any ASGI response, then close the connection."""
        body = json.dumps({"error": text}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "-"
