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

With ``compression: zstd`` a segment that is sealed (a later one exists) or
ends a finished stream is rewritten as ``NNNNNNNN.zst`` (app/storage/frames.py)
by one background thread, never on the append path: the raw segment is
checked against its sidecar, compressed into ``NNNNNNNN.zst.tmp``, fsynced and
renamed, and only then are the raw segment and its sidecar removed. A crash
leaves either a stray temp file (removed at start, the segment compressed
again) or both forms (the raw one removed at start). Reads take whichever form
is there, so data written with either setting stays readable with the other.
A finished stream's directory holds the marker ``finished``, so that a start
finds streams whose finish a crash cut off (``unfinished``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import resource
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import anyio.to_thread

from app.errors import CorruptBlock, NotReady, StreamNotFound
from app.storage import frames
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
from app.storage.frames import BadFrames, FrameIndex
from app.storage.packed import (
    compress_segment,
    content_length,
    decompress_segment,
    lowest_priority,
    segment_files,
    segment_index,
    tidy,
)

log = logging.getLogger("weft.store")
T = TypeVar("T")

COLD_READERS = 4  # threads reading segments that are not in the page cache
COLD_SEGMENTS = 1024  # cold segments remembered
COLD_SECONDS = 10.0  # how long a segment that missed the page cache is read in a thread
FINISHED = "finished"  # marker: the stream's last segment may be compressed too
INDEXES = 1024  # frame indexes of compressed segments kept in memory
AHEAD = 8  # frames (of up to 1 MiB) decoded ahead of replays, in all


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

    def __init__(
        self,
        root: Path,
        *,
        segment_bytes: int,
        compression: str = "none",
        compress_sealed: bool = True,
        read_only: bool = False,
    ) -> None:
        self._root = root
        self._segment_bytes = segment_bytes
        self.compression = compression
        # read_only: a tool beside a running server (weft verify) never compresses or tidies.
        self._read_only = read_only
        # False: a store above (the S3 tier) decides when to compress, before its upload.
        self._compress_sealed = compress_sealed and compression == "zstd" and not read_only
        self._queue: OrderedDict[tuple[str, int], None] = OrderedDict()  # segments to compress
        self._worker: asyncio.Task[None] | None = None
        # key -> its compression, as the thread runs it: awaiting it can be cancelled,
        # the thread cannot, and deletes and close() must wait for it to end.
        self._compressing: dict[str, concurrent.futures.Future[Path | None]] = {}
        self._packer = ThreadPoolExecutor(
            1, thread_name_prefix="weft-compress", initializer=lowest_priority
        )
        self._indexes: OrderedDict[tuple[str, int], FrameIndex] = OrderedDict()
        # Frames decoded ahead of the reads that will want them: (key, segment, start).
        self._ahead: OrderedDict[tuple[str, int, int], asyncio.Future[bytes]] = OrderedDict()
        self._unfinished: list[str] = []
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
        for segment in [s for s in {*self._indexes, *self._queue} if s[0] == key]:
            self._indexes.pop(segment, None)
            self._queue.pop(segment, None)
        for ahead in [a for a in self._ahead if a[0] == key]:
            self._ahead.pop(ahead).cancel()

    async def _quiesce(self, key: str) -> None:
        """Wait for a compression of key's that is running (a thread cannot be
        stopped), so that it cannot rename a file into a directory emptied meanwhile."""
        job = self._compressing.get(key)
        if job is not None and not job.done():
            await asyncio.wait([asyncio.wrap_future(job)])  # whatever its outcome

    # -- compression at rest -----------------------------------------------------------

    def _schedule(self, key: str, index: int) -> None:
        if not self._compress_sealed:
            return
        self._queue[(key, index)] = None
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._compress_queued())

    async def _compress_queued(self) -> None:
        while self._queue:
            (key, index), _ = self._queue.popitem(last=False)
            try:
                await self.compress(key, index)
            except Exception:
                log.exception("compress_failed key=%s segment=%d", key, index)

    async def compress(self, key: str, index: int) -> Path | None:
        """Store a sealed segment compressed, in the compression thread; return
        the compressed file (None: no such segment, or it stays raw). The
        segment must not be written any more."""
        await self._quiesce(key)
        job = self._packer.submit(compress_segment, self._dir(key), index)
        self._compressing[key] = job
        try:
            packed = await asyncio.wrap_future(job)
        finally:
            if job.done() and self._compressing.get(key) is job:
                del self._compressing[key]
        name = _segment_name(index)
        for slot in ((key, name), (key, name + SUFFIX)):  # the raw file's space is freed
            fd = self._fds.pop(slot, None)
            if fd is not None:
                os.close(fd)
        return packed

    async def _read_packed(self, key: str, index: int, fd: int, start: int, limit: int) -> bytes:
        """Content from start of a compressed segment, up to the end of the
        frame start is in: one frame decoded per read (in a thread), reads that
        follow are aligned with the frames, and the next frame is decoded
        meanwhile (a replay then decodes while the loop sends)."""
        slot = (key, index)
        found = self._indexes.get(slot)
        frame = None
        try:
            if found is None:
                found = await self._in_thread(fd, frames.read_index)
            self._indexes[slot] = found
            self._indexes.move_to_end(slot)
            if len(self._indexes) > INDEXES:
                self._indexes.popitem(last=False)
            span = found.span(start, start + 1)
            if not span:
                return b""
            frame = span[0]
            job = self._ahead.pop((key, index, frame.start), None) or self._decode(fd, frame)
            self._read_ahead(key, index, fd, found, frame)
            content = await job
        except BadFrames as exc:
            at = 0 if frame is None else frame.start
            offset = index * self._segment_bytes + at
            raise CorruptBlock(key, index, at // BLOCK, offset, str(exc), uncovered=False) from None
        stop = min(start + limit, frame.start + frame.length)
        if start == frame.start and stop == frame.start + frame.length:
            return content
        return content[start - frame.start : stop - frame.start]

    def _in_thread(self, fd: int, work: Callable[[int], T]) -> asyncio.Future[T]:
        """work(fd) in a reading thread, on a descriptor of its own (the shared
        one may be closed meanwhile: evicted, deleted)."""
        own = os.dup(fd)

        def run() -> T:
            try:
                return work(own)
            finally:
                os.close(own)

        return asyncio.get_running_loop().run_in_executor(self._threads, run)

    def _decode(self, fd: int, frame: frames.Frame) -> asyncio.Future[bytes]:
        return self._in_thread(
            fd, lambda own: frames.decode_frame(frame, os.pread(own, frame.stored, frame.at))
        )

    def _read_ahead(
        self, key: str, index: int, fd: int, found: FrameIndex, frame: frames.Frame
    ) -> None:
        end = frame.start + frame.length
        after = found.span(end, end + 1)
        if not after or (key, index, end) in self._ahead:
            return
        job = self._decode(fd, after[0])
        job.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved
        self._ahead[(key, index, end)] = job
        while len(self._ahead) > AHEAD:
            self._ahead.popitem(last=False)[1].cancel()

    async def stored_bytes(self, key: str) -> int:
        """The bytes the stream's segments take at rest (raw or compressed)."""

        def work() -> int:
            try:
                return sum(p.stat().st_size for p in segment_files(self._dir(key)).values())
            except FileNotFoundError:
                return 0

        return await anyio.to_thread.run_sync(work)

    def _dir(self, key: str) -> Path:
        return self._root / key

    async def create(self, key: str) -> None:
        directory = self._dir(key)
        self._forget(key)
        await self._quiesce(key)
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
                if index:  # the one before is sealed
                    self._schedule(key, index - 1)

        size = await self.size(key)
        return LocalSegmentWriter(self._dir(key), self._segment_bytes, size, on_segment)

    async def read(self, key: str, offset: int, limit: int) -> bytes | memoryview:
        index, start = divmod(offset, self._segment_bytes)
        name = _segment_name(index)
        fd = self._read_fd(key, name)
        if fd is None:
            packed = self._read_fd(key, name + frames.SUFFIX)
            if packed is None:
                return b""
            return await self._read_packed(key, index, packed, start, limit)
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
        try:
            found = segment_files(self._dir(key))
        except FileNotFoundError:
            raise StreamNotFound(key) from None
        if not found:
            return 0
        last, path = next(reversed(found.items()))
        try:
            length = content_length(path)
        except FileNotFoundError:  # compressed meanwhile: its other form is there
            length = content_length(segment_files(self._dir(key))[last])
        except BadFrames:
            length = 0  # unreadable footer: reads of it fail their checks
        return (len(found) - 1) * self._segment_bytes + length

    async def trim(self, key: str, size: int) -> None:
        self._forget(key)
        await self._quiesce(key)
        await anyio.to_thread.run_sync(self._trim, key, size)

    def _trim(self, key: str, size: int) -> None:
        directory = self._dir(key)
        index, used = divmod(size, self._segment_bytes)
        for path in directory.iterdir():
            number = segment_index(path.name)
            if number is not None and number > index:
                path.unlink()
        path = directory / _segment_name(index)
        if not path.exists() and Path(f"{path}{frames.SUFFIX}").exists():
            decompress_segment(directory, index)
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
        await self._quiesce(key)
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(self._dir(key), ignore_errors=True))

    async def start(self) -> None:
        """With compression on: settle compressions a crash cut off, queue the
        sealed segments still raw (also those written before it was on) and
        find the streams whose finish never came (see unfinished). With it
        off nothing is looked at (a start stays as fast as before): a crash
        state left by an earlier run reads right as it is."""

        def scan_all() -> tuple[list[tuple[str, int]], list[str]]:
            todo: list[tuple[str, int]] = []
            unfinished: list[str] = []
            for directory in sorted(self._root.iterdir()):
                if not directory.is_dir():
                    continue
                tidy(directory)
                found = segment_files(directory)
                finished = (directory / FINISHED).exists()
                if not finished:
                    unfinished.append(directory.name)
                last = max(found, default=-1)
                for index, path in found.items():
                    if path.name.isdigit() and (index < last or finished):
                        todo.append((directory.name, index))
            return todo, unfinished

        if self._read_only or not self._compress_sealed:
            return
        todo, self._unfinished = await anyio.to_thread.run_sync(scan_all)
        for key, index in todo:
            self._schedule(key, index)

    async def close(self) -> None:
        self._queue.clear()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        running = [asyncio.wrap_future(job) for job in self._compressing.values() if not job.done()]
        if running:
            await asyncio.wait(running)
        self._compressing.clear()

    async def settled(self) -> None:
        """Return once no compression is queued or running (tests, benchmarks)."""
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)

    async def finish(self, key: str) -> None:
        """With compression on: mark the stream finished and compress what is
        still raw, its last segment too. Never raises."""
        if not self._compress_sealed:
            return  # every byte is where it stays

        def mark() -> list[int]:
            directory = self._dir(key)
            (directory / FINISHED).touch()
            return [i for i, p in segment_files(directory).items() if p.name.isdigit()]

        try:
            raw = await anyio.to_thread.run_sync(mark)
        except OSError as exc:
            log.warning("finish_failed key=%s error=%s", key, exc)
            return
        for index in raw:
            self._schedule(key, index)

    async def hand_off(self, key: str) -> None:
        return None  # the only copy

    async def unfinished(self) -> list[str]:
        return list(self._unfinished)  # empty unless compression is on

    async def check(self) -> None:
        probe = self._root / ".ready"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError:
            raise NotReady("The segment store cannot be written.") from None
