"""The producer's bounded buffer of bytes the server has not acknowledged yet.

Three threads share it under one condition: the producer puts bytes in, the
sender frames them onto the current connection (and rewinds to the server's
offset after a resume), the acknowledger drops what the server reports stored.

The bytes live in a ring of fixed size (anonymous memory, paged in as it is
used), so nothing is ever moved: a put copies once into the ring (or a read
lands there directly, ``read_into``), the sender hands views of the ring to
the socket, and an acknowledgement only moves ``base``. A view handed out for
``[sent, total)`` stays valid: the ring reuses a byte's place only once the
server reported it stored, which it cannot before the byte was sent.
"""

from __future__ import annotations

import mmap
import os
import threading
import time

COALESCE_BYTES = 64 * 1024  # below this, a burst waits up to `linger` for more writes
MAX_CHUNK = 1024 * 1024


class SendBuffer:
    """Holds bytes ``[base, total)``. ``sent`` is where the current connection has
    framed up to; ``high`` the most ever framed (the server cannot have more)."""

    def __init__(self, capacity: int, linger: float) -> None:
        if capacity < 1:
            raise ValueError("the buffer size must be positive")
        self.cond = threading.Condition()
        self.capacity, self.linger = capacity, linger
        self._ring = memoryview(mmap.mmap(-1, capacity))
        self.base = self.sent = self.high = self.total = 0
        self.pending_since: float | None = None
        self.framed_at = 0.0  # when the sender last framed bytes: the end of a burst
        self.eof = self.cancelled_ = self.sleeping = self.stopped = False
        self.progress = 0  # bumped on every acknowledgement: the retries reset on progress
        # The sender sleeps in select(); a byte on this pipe wakes it for new data.
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    # Methods without their own ``with self.cond`` expect the caller to hold it.

    @property
    def used(self) -> int:
        return self.total - self.base

    @property
    def half_full_unacked(self) -> bool:
        return self.high > self.base and self.used >= self.capacity // 2

    def start_at(self, offset: int) -> None:
        """The stream already holds ``offset`` bytes: the first put is byte ``offset``."""
        self.base = self.sent = self.high = self.total = offset

    def views(self, start: int, end: int) -> list[memoryview]:
        """The ring's views of stream bytes ``[start, end)`` (one, or two where it wraps)."""
        if start >= end:
            return []
        at, size = start % self.capacity, end - start
        first = self._ring[at : min(at + size, self.capacity)]
        if len(first) == size:
            return [first]
        return [first, self._ring[: size - len(first)]]

    def copy(self, start: int, end: int) -> bytes:
        return b"".join(self.views(start, end))

    def free_views(self, limit: int) -> list[memoryview]:
        """Where the next ``min(limit, free)`` bytes go, for ``read_into``."""
        return self.views(self.total, self.total + min(limit, self.capacity - self.used))

    def put(self, view: memoryview) -> int:
        """Take what fits; return how many bytes."""
        taken = min(len(view), self.capacity - self.used)
        done = 0
        for place in self.views(self.total, self.total + taken):
            place[:] = view[done : done + len(place)]
            done += len(place)
        self.commit(taken)
        return taken

    def commit(self, size: int) -> None:
        """``size`` more bytes are in the ring after ``total`` (put, or a read there)."""
        if not size:
            return
        self.total += size
        if self.pending_since is None:
            self.pending_since = time.monotonic()
        self.poke()
        if self.half_full_unacked:
            self.cond.notify_all()  # the acknowledger waits for this

    def acknowledge(self, offset: int) -> bool:
        """The server stored everything before ``offset``: drop it. True if that moved."""
        offset = min(offset, self.high)
        if offset <= self.base:
            return False
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

    def frames(self) -> tuple[list[bytes | memoryview], bool, float | None]:
        with self.cond:
            total = self.total
            avail = total - self.sent
            now = time.monotonic()
            if avail and not self.eof and avail < COALESCE_BYTES and self.pending_since:
                # A write after a quiet spell leaves at once (a lone line must not
                # wait); small writes that follow a chunk within `linger` are
                # coalesced, for at most `linger`.
                due = self.framed_at + self.linger
                if now < due:
                    self.sleeping = True
                    return [], False, due
            out: list[bytes | memoryview] = []
            if avail:
                size = min(avail, MAX_CHUNK)
                out.append(b"%x\r\n" % size)
                out += self.views(self.sent, self.sent + size)
                out.append(b"\r\n")
                self.sent += size
                self.high = max(self.high, self.sent)
                self.pending_since = now if self.sent < total else None
                self.framed_at = now
                if self.half_full_unacked:
                    self.cond.notify_all()  # the acknowledger waits for framed bytes
            end = self.eof and self.sent == total
            if end:
                out.append(b"0\r\n\r\n")
            self.sleeping = not out
            return out, end, None
