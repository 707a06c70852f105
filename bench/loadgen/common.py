"""What every load-generator mode shares: the stdin/stdout protocol with the
orchestrator, an incremental HTTP/1.1 response parser, the line format."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

MIB = 1 << 20
NS = time.perf_counter_ns


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def emit(event: str, payload: Any = None) -> None:
    line = event if payload is None else f"{event} {json.dumps(payload)}"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def cpu_now() -> float:
    t = os.times()
    return t.user + t.system


class Commands:
    """Lines from stdin, delivered to whoever waits for them (thread- and loop-safe)."""

    def __init__(self) -> None:
        self._seen: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _event(self, name: str) -> threading.Event:
        with self._lock:
            return self._seen.setdefault(name, threading.Event())

    def _read(self) -> None:
        for line in sys.stdin:
            self._event(line.strip()).set()
        self._event("eof").set()

    def wait(self, name: str, timeout: float | None = None) -> bool:
        event, eof = self._event(name), self._event("eof")
        deadline = None if timeout is None else time.monotonic() + timeout
        while not event.is_set():
            if eof.is_set():
                return event.is_set()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            event.wait(0.05 if left is None else min(0.05, left))
        return True

    async def await_(self, name: str, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.wait, name, timeout)


# -- HTTP/1.1 response parsing --------------------------------------------------------


class ResponseParser:
    """Incremental parser of one HTTP/1.1 response: head, then a body framed by
    chunked encoding, Content-Length, or the connection's end. ``on_body`` gets each
    piece of body payload; ``done`` is set at the body's end."""

    def __init__(self, on_body: Callable[[bytes], None]) -> None:
        self.on_body = on_body
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = False
        self.done = False
        self.error: str | None = None
        self._buf = bytearray()
        self._chunked = False
        self._left = -1  # bytes left in the current chunk, or of a Content-Length body
        self._state = "head"

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        if self._state == "head":
            self._buf += data
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[:end]).decode("latin-1")
            rest = bytes(self._buf[end + 4 :])
            self._buf.clear()
            status_line, *lines = head.split("\r\n")
            parts = status_line.split(" ", 2)
            self.status = int(parts[1])
            for line in lines:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
            if self.status == 100:  # interim: parse the real head next
                self.status = 0
                self.headers.clear()
                if rest:
                    self.feed(rest)
                return
            self.head_done = True
            if "chunked" in self.headers.get("transfer-encoding", "").lower():
                self._chunked, self._state = True, "size"
            elif "content-length" in self.headers:
                self._left, self._state = int(self.headers["content-length"]), "length"
                if self._left == 0:
                    self.done = True
                    return
            else:
                self._state = "close"
            data = rest
            if not data:
                return
        if self._state == "length":
            piece = data[: self._left]
            self._left -= len(piece)
            if piece:
                self.on_body(piece)
            if self._left == 0:
                self.done = True
            return
        if self._state == "close":
            self.on_body(data)
            return
        self._feed_chunked(data)

    def _feed_chunked(self, data: bytes) -> None:
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end and not self.done:
            if self._state == "data":
                take = min(self._left, end - pos)
                self.on_body(bytes(view[pos : pos + take]))
                pos += take
                self._left -= take
                if self._left == 0:
                    self._state = "crlf"
                continue
            # size line, chunk-ending CRLF or trailer: line-based
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._buf += view[pos:]
                return
            line = bytes(self._buf) + bytes(view[pos:nl])
            self._buf.clear()
            pos = nl + 1
            line = line.rstrip(b"\r")
            if self._state == "size":
                size = int(line.split(b";", 1)[0], 16)
                if size == 0:
                    self._state = "trailer"
                else:
                    self._left, self._state = size, "data"
            elif self._state == "crlf":
                if line:
                    self.error = "bad chunk framing"
                self._state = "size"
            elif self._state == "trailer" and not line:
                self.done = True

    def connection_lost(self) -> None:
        if self._state == "close" and self.head_done:
            self.done = True


def make_line(ts: int, seq: int, stream: int, size: int) -> bytes:
    head = b"%020d %08d %06d " % (ts, seq, stream)
    return head + b"x" * (size - len(head) - 1) + b"\n"


def pattern_block(seed: int) -> bytes:
    return random.Random(seed).randbytes(MIB)
