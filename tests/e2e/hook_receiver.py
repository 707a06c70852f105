"""A real HTTP webhook receiver for the tests: a threaded http.server on a
port of its own, recording every call and answering as the test says."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Call:
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def document(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


def verify(call: Call, secret: str, *, tolerance: float = 300) -> bool:
    """The receiver's side of Weft-Signature (as the README shows it)."""
    fields = dict(part.split("=", 1) for part in call.headers["weft-signature"].split(","))
    signed = fields["t"].encode() + b"." + call.body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(fields["t"])) <= tolerance
    return fresh and hmac.compare_digest(expected, fields["v1"])


class Receiver:
    """Bound at once (its port is known and connections are refused), listening
    only from listen(): a receiver that is down, then comes up."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.fail_first = 0  # answer this many calls with 500
        self.status = 200
        self.answer = b""
        self.content_type = "text/plain"
        self.delay = 0.0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver._lock:
                    receiver.calls.append(Call(headers, body))
                    failing = len(receiver.calls) <= receiver.fail_first
                    receiver._changed.notify_all()
                if receiver.delay:
                    time.sleep(receiver.delay)
                status = 500 if failing else receiver.status
                answer = b"receiver failing" if failing else receiver.answer
                self.send_response(status)
                self.send_header("Content-Type", receiver.content_type)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self._server.daemon_threads = True
        self._server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.server_bind()
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def listen(self) -> Receiver:
        self._server.server_activate()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
        self._server.server_close()

    def wait_for(self, predicate: Any, timeout: float = 15.0) -> list[Call]:
        """Wait until predicate(calls) holds; the calls then."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.calls):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"receiver got {[c.document for c in self.calls]}")
                self._changed.wait(left)
            return list(self.calls)

    def delivered(self, calls: list[Call]) -> list[tuple[str, str]]:
        """(event, stream id) of each distinct delivery in first-arrival order."""
        seen: dict[str, tuple[str, str]] = {}
        for call in calls:
            doc = call.document
            seen.setdefault(doc["id"], (doc["event"], doc["stream"]["id"]))
        return list(seen.values())
