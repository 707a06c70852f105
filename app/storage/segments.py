"""LocalSegmentStore: append-only segment files under ``data_dir/segments``.

A stream's bytes live in ``segments/{key}/{index:08d}``; every segment but the
last holds exactly ``segment_bytes``, so an offset maps to a segment by
arithmetic. Writes are plain ``os.write`` on the event loop: they land in the
page cache, which survives a crash of the process, and measured faster than a
thread hop per chunk. fsync, which can block for long, runs in a thread.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
from collections import OrderedDict
from pathlib import Path

import anyio.to_thread

from app.errors import NotReady, StreamNotFound


def _read_fd_budget() -> int:
    """Read descriptors to keep open: enough for every live stream's current
    segment on a busy server, a quarter of the process's limit at most."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, min(8192, soft // 4))


def _segment_name(index: int) -> str:
    return f"{index:08d}"


class LocalSegmentWriter:
    def __init__(self, directory: Path, segment_bytes: int, size: int) -> None:
        self._dir = directory
        self._segment_bytes = segment_bytes
        self.size = size
        self._index = -1
        self._fd = -1
        self._unsynced: list[int] = []  # sealed segments' fds awaiting sync()
        self._closing = asyncio.Lock()  # close() must not pull an fd from under fsync

    def _open(self, index: int) -> None:
        if self._fd >= 0:
            self._unsynced.append(self._fd)
        path = self._dir / _segment_name(index)
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except FileNotFoundError:
            raise StreamNotFound(self._dir.name) from None
        self._index = index

    async def append(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            index, used = divmod(self.size, self._segment_bytes)
            if index != self._index:
                self._open(index)
            piece = view[: self._segment_bytes - used]
            written = os.write(self._fd, piece)
            self.size += written
            view = view[written:]
        return self.size

    async def sync(self) -> None:
        async with self._closing:
            fds, self._unsynced = self._unsynced, []
            current = self._fd

            def work() -> None:
                for fd in fds:
                    os.fsync(fd)
                    os.close(fd)
                if current >= 0:
                    os.fsync(current)

            await anyio.to_thread.run_sync(work)

    async def close(self) -> None:
        async with self._closing:
            for fd in self._unsynced:
                os.close(fd)
            self._unsynced = []
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class LocalSegmentStore:
    def __init__(self, root: Path, *, segment_bytes: int) -> None:
        self._root = root
        self._segment_bytes = segment_bytes
        root.mkdir(parents=True, exist_ok=True)
        # Read descriptors shared by every reader (pread needs no position):
        # a thousand tailing readers would otherwise open and close a file per chunk.
        self._fds: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._fd_budget = _read_fd_budget()

    def _read_fd(self, key: str, index: int) -> int | None:
        slot = (key, index)
        fd = self._fds.get(slot)
        if fd is not None:
            self._fds.move_to_end(slot)
            return fd
        try:
            fd = os.open(f"{self._root}/{key}/{_segment_name(index)}", os.O_RDONLY)
        except FileNotFoundError:
            return None
        self._fds[slot] = fd
        if len(self._fds) > self._fd_budget:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def _forget(self, key: str) -> None:
        for slot in [slot for slot in self._fds if slot[0] == key]:
            os.close(self._fds.pop(slot))

    def _dir(self, key: str) -> Path:
        return self._root / key

    async def create(self, key: str) -> None:
        directory = self._dir(key)
        self._forget(key)
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        (directory / _segment_name(0)).touch()

    async def open_writer(self, key: str) -> LocalSegmentWriter:
        return LocalSegmentWriter(self._dir(key), self._segment_bytes, await self.size(key))

    async def read(self, key: str, offset: int, limit: int) -> bytes:
        index, start = divmod(offset, self._segment_bytes)
        fd = self._read_fd(key, index)
        if fd is None:
            return b""
        return os.pread(fd, min(limit, self._segment_bytes - start), start)

    async def size(self, key: str) -> int:
        directory = self._dir(key)
        try:
            names = sorted(p.name for p in directory.iterdir() if p.name.isdigit())
        except FileNotFoundError:
            raise StreamNotFound(key) from None
        if not names:
            return 0
        last = len(names) - 1
        return last * self._segment_bytes + (directory / names[-1]).stat().st_size

    async def delete(self, key: str) -> None:
        self._forget(key)
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(self._dir(key), ignore_errors=True))

    async def check(self) -> None:
        probe = self._root / ".ready"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError:
            raise NotReady("The segment store cannot be written.") from None
