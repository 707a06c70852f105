"""LocalSegmentStore: append-only segment files under ``data_dir/segments``.

A stream's bytes live in ``segments/{key}/{index:08d}``; every segment but the
last holds exactly ``segment_bytes``, so an offset maps to a segment by
arithmetic. Writes are plain ``os.write`` on the event loop: they land in the
page cache, which survives a crash of the process, and measured faster than a
thread hop per chunk. fsync, which can block for long, runs in a thread.

Every segment has a sidecar of block checksums (app/storage/blocks.py),
written with each append and synced with the segment. Reads verify whole
blocks against it, except in the segment a writer of this process is filling:
those bytes were just written from memory, and tailing readers would otherwise
checksum the same block again for every append. A segment without a sidecar
(written by a version before checksums) is read unverified.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import anyio.to_thread

from app.errors import CorruptBlock, NotReady, StreamNotFound
from app.storage.blocks import (
    BLOCK,
    SUFFIX,
    Flaw,
    Running,
    Sums,
    parse,
    scan,
    sidecar_bytes,
    verify,
)


def _read_fd_budget() -> int:
    """Read descriptors to keep open: enough for every live stream's current
    segment on a busy server, a quarter of the process's limit at most."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, min(8192, soft // 4))


def _segment_name(index: int) -> str:
    return f"{index:08d}"


class LocalSegmentWriter:
    def __init__(
        self,
        directory: Path,
        segment_bytes: int,
        size: int,
        on_segment: Callable[[int | None], None],
    ) -> None:
        self._dir = directory
        self._segment_bytes = segment_bytes
        self._sidecar_bytes = sidecar_bytes(segment_bytes)
        self._on_segment = on_segment  # tells the store which segment is being filled
        self.size = size
        self._index = -1
        self._fd = -1
        self._sums_fd = -1
        self._sums = Running()
        self._unsynced: list[int] = []  # sealed segments' fds awaiting sync()
        self._closing = asyncio.Lock()  # close() must not pull an fd from under fsync

    def _open(self, index: int) -> None:
        for fd in (self._fd, self._sums_fd):
            if fd >= 0:
                self._unsynced.append(fd)
        self._fd = self._sums_fd = -1
        path = self._dir / _segment_name(index)
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._sums_fd = os.open(f"{path}{SUFFIX}", os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            raise StreamNotFound(self._dir.name) from None
        self._index = index
        self._on_segment(index)
        self._sums = Running(self._load_sums(self.size - index * self._segment_bytes))

    def _load_sums(self, used: int) -> Sums:
        """The checksums of the segment's first used bytes, as the sidecar has
        them. A sidecar that does not cover exactly those bytes (a segment of a
        version before checksums, resumed) is rebuilt from the segment."""
        if used == 0:
            os.ftruncate(self._sums_fd, 0)
            return Sums()
        sums = parse(os.pread(self._sums_fd, self._sidecar_bytes, 0))
        if sums is not None and sums.covered == used:
            return sums
        reader = os.open(self._dir / _segment_name(self._index), os.O_RDONLY)
        try:
            sums = scan(reader, used)
        finally:
            os.close(reader)
        os.ftruncate(self._sums_fd, 0)
        os.pwrite(self._sums_fd, sums.encode(), 0)
        return sums

    async def append(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            index, used = divmod(self.size, self._segment_bytes)
            if index != self._index:
                self._open(index)
            piece = view[: self._segment_bytes - used]
            written = os.write(self._fd, piece)
            self._checksum(piece[:written], used)
            self.size += written
            view = view[written:]
        return self.size

    def _checksum(self, piece: memoryview, used: int) -> None:
        """Cover the bytes just written in the sidecar. When that write fails
        (a full disk) the bytes are taken back: stored bytes always have checksums."""
        before = self._sums.state()
        at, record = self._sums.add(piece)
        try:
            os.pwrite(self._sums_fd, record, at)
        except OSError:
            self._sums.restore(before)
            os.ftruncate(self._fd, used)
            raise

    async def sync(self) -> None:
        async with self._closing:
            fds, self._unsynced = self._unsynced, []
            current = [fd for fd in (self._fd, self._sums_fd) if fd >= 0]

            def work() -> None:
                for fd in fds:
                    os.fsync(fd)
                    os.close(fd)
                for fd in current:
                    os.fsync(fd)

            await anyio.to_thread.run_sync(work)

    async def close(self) -> None:
        async with self._closing:
            for fd in self._unsynced:
                os.close(fd)
            self._unsynced = []
            for fd in (self._fd, self._sums_fd):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._sums_fd = -1
            if self._index >= 0:
                self._on_segment(None)


class LocalSegmentStore:
    def __init__(self, root: Path, *, segment_bytes: int) -> None:
        self._root = root
        self._segment_bytes = segment_bytes
        self._sidecar_bytes = sidecar_bytes(segment_bytes)
        root.mkdir(parents=True, exist_ok=True)
        # Read descriptors shared by every reader (pread needs no position):
        # a thousand tailing readers would otherwise open and close a file per chunk.
        self._fds: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._fd_budget = _read_fd_budget()
        self._filling: dict[str, int] = {}  # key -> the segment its open writer fills

    def _read_fd(self, key: str, name: str) -> int | None:
        slot = (key, name)
        fd = self._fds.get(slot)
        if fd is not None:
            self._fds.move_to_end(slot)
            return fd
        try:
            fd = os.open(f"{self._root}/{key}/{name}", os.O_RDONLY)
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
        def on_segment(index: int | None) -> None:
            if index is None:
                self._filling.pop(key, None)
            else:
                self._filling[key] = index

        size = await self.size(key)
        return LocalSegmentWriter(self._dir(key), self._segment_bytes, size, on_segment)

    async def read(self, key: str, offset: int, limit: int) -> bytes:
        index, start = divmod(offset, self._segment_bytes)
        fd = self._read_fd(key, _segment_name(index))
        if fd is None:
            return b""
        end = min(start + limit, self._segment_bytes)
        sums = None if self._filling.get(key) == index else self._sums(key, index)
        if sums is None:
            return os.pread(fd, end - start, start)
        # Whole blocks, so each can be checked: at most a block more on either side.
        first, last = start // BLOCK, -(-end // BLOCK)
        base = first * BLOCK
        raw = os.pread(fd, min(last * BLOCK, self._segment_bytes) - base, base)
        good, bad = verify(sums, raw, first, last - first)
        stop = min(end, base + good)
        if stop <= start:
            if bad is None:
                return b""
            at = index * self._segment_bytes + bad.at
            uncovered = bad.flaw is Flaw.UNCHECKED
            raise CorruptBlock(key, index, bad.block, at, bad.flaw.value, uncovered=uncovered)
        if start == base and stop - base == len(raw):
            return raw
        return raw[start - base : stop - base]

    def _sums(self, key: str, index: int) -> Sums | None:
        """The segment's checksums; None for a segment without (unverified)."""
        fd = self._read_fd(key, _segment_name(index) + SUFFIX)
        if fd is None:
            return None
        sums = parse(os.pread(fd, self._sidecar_bytes, 0))
        if sums is None:
            at = index * self._segment_bytes
            raise CorruptBlock(key, index, 0, at, "unreadable checksums", uncovered=False)
        return sums

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

    async def trim(self, key: str, size: int) -> None:
        self._forget(key)
        await anyio.to_thread.run_sync(self._trim, key, size)

    def _trim(self, key: str, size: int) -> None:
        directory = self._dir(key)
        index, used = divmod(size, self._segment_bytes)
        for path in directory.iterdir():
            number = path.name.removesuffix(SUFFIX)
            if number.isdigit() and int(number) > index:
                path.unlink()
        path = directory / _segment_name(index)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, used)
            sums = scan(fd, used)
            os.fsync(fd)
        finally:
            os.close(fd)
        fd = os.open(f"{path}{SUFFIX}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, sums.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    async def delete(self, key: str) -> None:
        self._forget(key)
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(self._dir(key), ignore_errors=True))

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def finish(self, key: str) -> None:
        return None  # every byte is where it stays

    async def check(self) -> None:
        probe = self._root / ".ready"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError:
            raise NotReady("The segment store cannot be written.") from None
