"""The producer's bounded buffer of bytes the server has not acknowledged yet.

Three threads share it under one condition: the producer puts bytes in, the
sender frames them onto the current connection (and rewinds to the server's
offset after a resume), the acknowledger drops what the server reports stored.
"""

from __future__ import annotations

import os
import threading
import time

COALESCE_BYTES = 64 * 1024  # below this, wait up to `linger` for more writes
MAX_CHUNK = 256 * 1024


class SendBuffer:
    """Holds bytes ``[base, total)``. ``sent`` is where the current connection has
    framed up to; ``high`` the most ever framed (the server cannot have more)."""

    def __init__(self, capacity: int, linger: float) -> None:
        if capacity < 1:
            raise ValueError("the buffer size must be positive")
        self.cond = threading.Condition()
        self.capacity, self.linger = capacity, linger
        self.data = bytearray()
        self.base = self.sent = self.high = 0
        self.pending_since: float | None = None
        self.eof = self.cancelled_ = self.sleeping = self.stopped = False
        self.progress = 0  # bumped on every acknowledgement: the retries reset on progress
        # The sender sleeps in select(); a byte on this pipe wakes it for new data.
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    # Methods without their own ``with self.cond`` expect the caller to hold it.

    @property
    def total(self) -> int:
        return self.base + len(self.data)

    @property
    def half_full_unacked(self) -> bool:
        return self.high > self.base and len(self.data) >= self.capacity // 2

    def put(self, view: memoryview) -> int:
        """Take what fits; return how many bytes."""
        taken = min(len(view), self.capacity - len(self.data))
        if taken:
            self.data += view[:taken]
            if self.pending_since is None:
                self.pending_since = time.monotonic()
            self.poke()
            if self.half_full_unacked:
                self.cond.notify_all()  # the acknowledger waits for this
        return taken

    def acknowledge(self, offset: int) -> bool:
        """The server stored everything before ``offset``: drop it. True if that moved."""
        offset = min(offset, self.high)
        if offset <= self.base:
            return False
        del self.data[: offset - self.base]
        self.base = offset
        self.sent = max(self.sent, offset)
        self.progress += 1
        self.cond.notify_all()
        return True

    def rewind(self, offset: int) -> None:
        """A new connection starts at ``offset`` (the server's size, >= base)."""
        self.acknowledge(offset)
        self.sent = offset

    def finish(self) -> None:
        self.eof = True
        self.poke()

    def cancel(self) -> None:
        self.cancelled_ = True
        self.sleeping = True  # wake the sender whatever it waits for
        self.poke()
        self.cond.notify_all()

    def poke(self) -> None:
        if self.sleeping and not self.stopped:
            self.sleeping = False
            try:
                os.write(self.wake_w, b"x")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already

    def stop(self) -> None:
        """No sender any more: close the wake-up pipe."""
        if not self.stopped:
            self.stopped = True
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.cond.notify_all()

    # The BodySource protocol of wire.exchange (these take the lock themselves).

    def cancelled(self) -> bool:
        return self.cancelled_

    def frames(self) -> tuple[bytes, bool, float | None]:
        with self.cond:
            total = self.total
            avail = total - self.sent
            now = time.monotonic()
            if avail and not self.eof and avail < COALESCE_BYTES and self.pending_since:
                # Coalesce a burst of small writes, but never hold a lone line
                # for more than `linger`.
                due = self.pending_since + self.linger
                if now < due:
                    self.sleeping = True
                    return b"", False, due
            out = bytearray()
            if avail:
                size = min(avail, MAX_CHUNK)
                start = self.sent - self.base
                out += b"%x\r\n" % size
                out += self.data[start : start + size]
                out += b"\r\n"
                self.sent += size
                self.high = max(self.high, self.sent)
                self.pending_since = now if self.sent < total else None
                if self.half_full_unacked:
                    self.cond.notify_all()  # the acknowledger waits for framed bytes
            end = self.eof and self.sent == total
            if end:
                out += b"0\r\n\r\n"
            self.sleeping = not out
            return bytes(out), end, None
