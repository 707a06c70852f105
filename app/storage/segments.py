"""LocalSegmentStore: append-only segment files under ``data_dir/segments``.

A stream's bytes live in ``segments/{key}/{index:08d}``; every segment but the
last holds exactly ``segment_bytes``, so an offset maps to a segment by
arithmetic. Writes are plain ``os.write`` on the event loop: they land in the
page cache, which survives a crash of the process, and measured faster than a
thread hop per chunk. fsync, which can block for long, runs in a thread, and
so does a read of bytes that are not in the page cache (a cold replay would
otherwise stall every stream on the loop for each disk read); a read of cached
bytes stays on the loop, where it costs no thread hop.

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
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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

COLD_READERS = 4  # threads reading segments that are not in the page cache
COLD_SEGMENTS = 1024  # cold segments remembered
COLD_SECONDS = 10.0  # how long a segment that missed the page cache is read in a thread


def _read_fd_budget() -> int:
    """Read descriptors to keep open: enough for every live stream's current
    segment on a busy server, a quarter of the process's limit at most."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, min(8192, soft // 4))


def _segment_name(index: int) -> str:
    return f"{index:08d}"


def _whole_blocks(start: int, end: int, segment_bytes: int) -> tuple[int, int]:
    """The range of whole checksum blocks around start..end of a segment."""
    return start - start % BLOCK, min(-(-end // BLOCK) * BLOCK, segment_bytes)


class _Read:
    """Up to length bytes of a file from pos (fewer where it ends): first what
    the page cache holds, without waiting (RWF_NOWAIT stops at the first page
    that is not there), then, if anything is missing, the rest from the disk."""

    def __init__(self, fd: int, pos: int, length: int) -> None:
        self.fd, self.pos = fd, pos
        self.buffer = bytearray(max(0, min(length, os.fstat(fd).st_size - pos)))
        self.got = 0

    @property
    def done(self) -> bool:
        return self.got >= len(self.buffer)

    def read_cached(self) -> None:
        if self.done:
            return
        try:
            self.got = os.preadv(self.fd, [self.buffer], self.pos, os.RWF_NOWAIT)
        except OSError:  # EAGAIN: not cached; EOPNOTSUPP, EINVAL: cannot tell, so cold
            pass

    def read_rest(self) -> None:
        with memoryview(self.buffer) as view:
            while not self.done:
                got = os.preadv(self.fd, [view[self.got :]], self.pos + self.got)
                if not got:
                    break  # shortened meanwhile
                self.got += got

    def view(self) -> memoryview:
        return memoryview(self.buffer)[: self.got]


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
    offload_cold_reads = True  # False: every read on the loop (bench/coldreplay.py's reference)

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
        self._threads = ThreadPoolExecutor(COLD_READERS, thread_name_prefix="weft-cold-read")
        # Segments a read found missing from the page cache, and until when their
        # reads go straight to a thread: while the kernel reads ahead of a cold
        # replay, reading its pages on the loop stalls it (measured: p99 of 50
        # tailers 100 ms instead of 8 ms, bench/coldreplay.py).
        self._cold: dict[tuple[str, int], float] = {}

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
        for cold in [cold for cold in self._cold if cold[0] == key]:
            del self._cold[cold]

    def _dir(self, key: str) -> Path:
        return self._root / key

    async def create(self, key: str) -> None:
        directory = self._dir(key)
        self._forget(key)
        if directory.exists():  # a large stream's files take long to remove
            await anyio.to_thread.run_sync(shutil.rmtree, directory)
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

    async def read(self, key: str, offset: int, limit: int) -> bytes | memoryview:
        index, start = divmod(offset, self._segment_bytes)
        name = _segment_name(index)
        fd = self._read_fd(key, name)
        if fd is None:
            return b""
        end = min(start + limit, self._segment_bytes)
        if self._filling.get(key) == index:
            return os.pread(fd, end - start, start)  # just written: in the page cache
        sums_fd = self._read_fd(key, name + SUFFIX)
        # Whole blocks, so each can be checked: at most a block more on either side.
        base, stop = (
            (start, end) if sums_fd is None else _whole_blocks(start, end, self._segment_bytes)
        )
        data = _Read(fd, base, stop - base)
        parts = [data] if sums_fd is None else [data, _Read(sums_fd, 0, self._sidecar_bytes)]
        if not self.offload_cold_reads:
            for part in parts:
                part.read_rest()
        else:
            slot = (key, index)
            if self._cold.get(slot, 0.0) < time.monotonic():
                for part in parts:
                    part.read_cached()
            cold = [part for part in parts if not part.done]
            if cold and not await self._read_cold(cold):
                self._cold.pop(slot, None)
                self._cold[slot] = time.monotonic() + COLD_SECONDS
                if len(self._cold) > COLD_SEGMENTS:
                    del self._cold[next(iter(self._cold))]
        sidecar = None if sums_fd is None else parts[1].view()
        return self._checked(key, index, data.view(), sidecar, base, start, end)

    async def _read_cold(self, parts: list[_Read]) -> bool:
        """Read parts in a thread: waiting for the disk on the loop would hold
        up every other stream. Returns whether the page cache held them after
        all (the segment is hot again). The thread gets descriptors of its own,
        since the shared ones may be closed (evicted, deleted) meanwhile."""
        for part in parts:
            part.fd = os.dup(part.fd)

        def work() -> bool:
            try:
                for part in parts:
                    part.read_cached()
                cached = all(part.done for part in parts)
                for part in parts:
                    part.read_rest()
                return cached
            finally:
                for part in parts:
                    os.close(part.fd)

        return await asyncio.get_running_loop().run_in_executor(self._threads, work)

    def _checked(
        self,
        key: str,
        index: int,
        data: memoryview,
        sidecar: memoryview | None,
        base: int,
        start: int,
        end: int,
    ) -> memoryview:
        """Bytes start..end of a segment from data (which starts at base),
        verified against the sidecar when there is one: the good bytes before a
        bad block, or CorruptBlock at it."""
        if sidecar is None:
            return data
        sums = parse(bytes(sidecar))
        if sums is None:
            at = index * self._segment_bytes
            raise CorruptBlock(key, index, 0, at, "unreadable checksums", uncovered=False)
        good, bad = verify(sums, data, base // BLOCK, -(-(end - base) // BLOCK))
        stop = min(end, base + good)
        if stop <= start:
            if bad is None:
                return data[:0]
            at = index * self._segment_bytes + bad.at
            uncovered = bad.flaw is Flaw.UNCHECKED
            raise CorruptBlock(key, index, bad.block, at, bad.flaw.value, uncovered=uncovered)
        return data[start - base : stop - base]

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
