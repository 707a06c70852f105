"""uvicorn's httptools protocol with Weft's two edge rules: errors of the HTTP
parser are JSON like every other error (SPEC §7), and a request head larger
than ``limits.header_bytes`` is refused (httptools itself has no limit). It
also spares the ingest path two copies of every body byte, and lets a response
be cut (``CUT_EXTENSION``)."""

from __future__ import annotations

import json
from typing import Any

from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

DEFAULT_HEAD_LIMIT = 64 * 1024
# scope["extensions"][CUT_EXTENSION](): close the connection in the middle of a
# response body, quietly. An app that just stops sending gets the same close,
# but with an error line and a traceback from uvicorn for every such response.
CUT_EXTENSION = "weft.cut"


class HeadTooLarge(Exception):
    pass


class WeftHttpProtocol(HttpToolsProtocol):
    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._head_limit = config.h11_max_incomplete_event_size or DEFAULT_HEAD_LIMIT
        self._head_bytes = 0
        self._head_too_large = False

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        def cut() -> None:
            cycle.disconnected = True  # so the cycle neither sends more nor complains
            self.transport.close()

        extensions: dict[str, Any] = cycle.scope.setdefault("extensions", {})
        extensions[CUT_EXTENSION] = cut
        super()._start_asgi_task(cycle, app)

    def on_message_begin(self) -> None:
        self._head_bytes = 0
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

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            status, text = 431, f"The request head is larger than {self._head_limit} bytes."
        else:
            status, text = 400, "The request is not valid HTTP/1.1."
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
