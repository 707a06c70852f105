"""A reader that follows a stream on a node in a thread and keeps what it got."""

from __future__ import annotations

import threading

import httpx


class Follower:
    def __init__(self, url: str, stream_id: str, offset: int = 0) -> None:
        self.url, self.stream_id, self.offset = url, stream_id, offset
        self.data = bytearray()
        self.status: int | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        query = f"?offset={self.offset}" if self.offset else ""
        try:
            with httpx.stream(
                "GET", f"{self.url}/stream/{self.stream_id}{query}", timeout=60
            ) as response:
                self.status = response.status_code
                for chunk in response.iter_raw():
                    self.data += chunk
        except BaseException as exc:  # a node killed under it: the test looks at .error
            self.error = exc
        finally:
            self.done.set()

    def wait(self, timeout: float = 60) -> bytes:
        assert self.done.wait(timeout), f"reader of {self.stream_id} on {self.url} did not end"
        return bytes(self.data)

    def wait_for_size(self, size: int, timeout: float = 30) -> None:
        deadline = threading.Event()
        for _ in range(int(timeout * 100)):
            if len(self.data) >= size or self.done.is_set():
                break
            deadline.wait(0.01)
        assert len(self.data) >= size, (
            f"reader on {self.url} got {len(self.data)} of {size} bytes (error {self.error!r})"
        )
