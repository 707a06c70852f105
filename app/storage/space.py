"""Free space of the data directory (SPEC §2 Limits, §7).

``DiskSpace.require`` refuses new streams and appends with 507 once the free
space falls below ``limits.min_free_bytes``. It sits on the per-chunk path, so
``statvfs`` (2.5 µs a call on the development machine) is re-read only every
100 ms or after a few MiB were written, whichever comes first.

A small reserve file lets deletes work on a completely full disk: SQLite needs
a few pages of journal to commit a DELETE, so when that fails for lack of
space the service frees the reserve, retries, and the reserve is re-created
once there is room again.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from app.errors import InsufficientStorage, StorageUnavailable

log = logging.getLogger("weft.storage")

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
RESERVE_BYTES = 4 * 1024 * 1024
RESERVE_NAME = ".space-reserve"
MAX_AGE = 0.1  # seconds a measurement is trusted


def out_of_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


@contextmanager
def disk_errors() -> Iterator[None]:
    """Turn an OSError of a segment write into 507 (no space) or 503 (anything
    else). The OSError itself is never shown: it names file paths."""
    try:
        yield
    except OSError as exc:
        if out_of_space(exc):
            raise InsufficientStorage() from None
        raise StorageUnavailable("The server could not store the stream's bytes.") from None


class SpaceGuard(Protocol):
    """What the service needs to know about the disk under its data."""

    def require(self) -> None:
        """Raise InsufficientStorage when free space is below limits.min_free_bytes."""

    def consumed(self, size: int) -> None:
        """size more bytes were written (measure again sooner)."""

    def release_reserve(self) -> bool:
        """Free the reserve file; False when there was none to free."""

    def refresh(self) -> None:
        """Space may have been freed: measure again, and re-create the reserve
        when the disk has room for it."""


class NoSpaceGuard:
    """No local disk to watch (unit tests, backends that are not files)."""

    def require(self) -> None:
        return None

    def consumed(self, size: int) -> None:
        return None

    def release_reserve(self) -> bool:
        return False

    def refresh(self) -> None:
        return None


class DiskSpace:
    def __init__(
        self,
        directory: Path,
        *,
        min_free_bytes: int,
        reserve_bytes: int = RESERVE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dir = directory
        self._min_free = min_free_bytes
        self._reserve_bytes = reserve_bytes
        self._reserve = directory / RESERVE_NAME
        self._clock = clock
        # Measure again after a quarter of the margin was written (1-16 MiB):
        # a fast producer cannot run far past the limit between two reads.
        self._max_written = max(1 << 20, min(16 << 20, min_free_bytes // 4))
        self._measured_at = -math.inf
        self._written = 0
        self._free = 0
        self._reserved = self._reserve_present()

    def free(self) -> int:
        """Bytes an unprivileged writer may still use, at most MAX_AGE old."""
        now = self._clock()
        if now - self._measured_at >= MAX_AGE or self._written >= self._max_written:
            stat = os.statvfs(self._dir)
            self._free = stat.f_bavail * stat.f_frsize
            self._measured_at, self._written = now, 0
        return self._free

    def require(self) -> None:
        if self._min_free and self.free() < self._min_free:
            raise InsufficientStorage(
                "The server's disk is below its free-space limit (limits.min_free_bytes); "
                "delete streams to make room."
            )

    def consumed(self, size: int) -> None:
        self._written += size

    def release_reserve(self) -> bool:
        if not self._reserved:
            return False
        self._reserved = False
        self._measured_at = -math.inf
        try:
            self._reserve.unlink()
        except FileNotFoundError:
            return False
        log.warning("disk_full_reserve_released bytes=%d", self._reserve_bytes)
        return True

    def refresh(self) -> None:
        """One statvfs. A missing reserve is re-created only while twice its
        size is free, so restoring it never fills the disk itself."""
        self._measured_at = -math.inf
        if self._reserved or self.free() < 2 * self._reserve_bytes:
            return
        try:
            fd = os.open(self._reserve, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self._reserve_bytes)  # real blocks, not a sparse file
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("space_reserve_failed error=%s", errno.errorcode.get(exc.errno or 0, "?"))
            self._reserve.unlink(missing_ok=True)
            return
        self._reserved = True
        self._measured_at = -math.inf

    def _reserve_present(self) -> bool:
        try:
            return self._reserve.stat().st_blocks * 512 >= self._reserve_bytes
        except FileNotFoundError:
            return False
