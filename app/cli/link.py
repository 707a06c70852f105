"""``bin/stream --link NAME``: point a link at the stream once it exists (issue 12)."""

from __future__ import annotations

import json
import threading
import time
from urllib.parse import quote, urlsplit

from app.client.common import Backoff, Endpoint
from app.client.errors import Retryable, is_retryable_status, server_message
from app.client.wire import request


class Linker:
    """PUTs ``/links/NAME`` on its own thread, retrying a server that fails or
    does not answer, so the writer's on_created callback never waits on it."""

    def __init__(self, endpoint: Endpoint, name: str, backoff: Backoff) -> None:
        self.endpoint, self.name, self.backoff = endpoint, name, backoff
        self.error: str | None = None
        self._thread: threading.Thread | None = None

    def start(self, stream_id: str) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(stream_id,), name="link", daemon=True
        )
        self._thread.start()

    def wait(self, timeout: float) -> str | None:
        """None once the link points at the stream, else why it does not."""
        if self._thread is None:
            return "the stream was never created"
        self._thread.join(timeout)
        if self._thread.is_alive():
            return "the server did not answer in time"
        return self.error

    def _run(self, stream_id: str) -> None:
        endpoint = self.endpoint
        path = urlsplit(endpoint.url).path.rstrip("/") + "/links/" + quote(self.name, safe="")
        body = json.dumps({"stream": stream_id}).encode()
        for attempt in range(self.backoff.retries + 1):
            try:
                response = request(
                    endpoint,
                    "PUT",
                    path,
                    {"Content-Type": "application/json"},
                    body=body,
                    timeout=30,
                )
            except Retryable as exc:
                reason = str(exc)
            else:
                status = response.status or 0
                if status in (200, 201):
                    self.error = None
                    return
                reason = server_message(status, bytes(response.body), response.reason)
                if not is_retryable_status(status):
                    self.error = reason
                    return
            self.error = reason
            if attempt < self.backoff.retries:
                time.sleep(self.backoff.delay(attempt))
