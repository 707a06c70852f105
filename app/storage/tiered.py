"""TieredSegmentStore: segments on local disk while they fill, then in a bucket
(SPEC §12.1, DESIGN "Scale-out").

Writes go to a LocalSegmentStore, as without S3. A segment that is full (and a
finished stream's last, partial one) is uploaded in the background as an
object of its own, ``{key}/{index:08d}``, with its block checksums beside it
as ``{key}/{index:08d}.crc``, so ranged reads from the bucket are verified as
local ones are. Only then is the marker ``state_root/{key}/{index:08d}``
written; the marker, not memory, says that a segment is in the bucket, so a
restart uploads whatever has none.

An uploaded segment's local file stays as a read cache (LRU, ``cache_bytes``
in all); evicting it truncates the file to nothing and extends it back to its
length, a sparse file that takes no disk space but keeps the size the local
store computes a stream's size from. Reads of an evicted segment are ranged
GETs. At start every uploaded segment is evicted: the cache starts cold. A
finished stream with every segment uploaded and none cached is retired: its
local files and markers go, and ``state_root/{key}/retired`` keeps its size.

While the bucket cannot be reached, uploads retry forever (with backoff) and
producers may go on until ``max_pending_bytes`` of full segments wait; then
appends get 503 (StorageUnavailable) until uploads catch up. A deleted
stream's objects are removed in the background, retried until done, also
across restarts (marker ``state_root/.deleting/{key}``).

With a JetStream tail (``tail_url`` nats://, SPEC §12.2), an append is
acknowledged once JetStream has it; the local files are then a mirror, for
local reads and for the uploads. Once a segment's upload is recorded its bytes
are purged from the stream's subject, so what JetStream holds is the unsealed
rest, and its first message tells which segments are in the bucket: a node
without the local files (a reader, or a writer taking over) reads the unsealed
bytes from JetStream and the rest from the bucket, and a writer there rebuilds
the mirror from JetStream first. Opening a writer claims the subject, which
fences every older writer of the stream (SPEC: a node that lost its producer
can never append again).

With ``compression: zstd`` (issue 12) each segment is compressed on local disk
(app/storage/segments.py) just before its upload, and goes up as
``{key}/{index:08d}.zst`` with its frame index beside it as
``{key}/{index:08d}.zidx`` instead of the raw object and its ``.crc``: a ranged
read fetches the index once (cached), then only the frames it needs. Either
form is read whatever the setting. An upload marker holds the bytes of the
segment's object (``stored_bytes``); a retired stream keeps their sum in
``state_root/{key}/stored``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections import Counter, OrderedDict
from collections.abc import Sequence
from pathlib import Path

import anyio.to_thread

from app.errors import (
    CorruptBlock,
    NotFound,
    NotReady,
    StorageUnavailable,
    StreamNotFound,
    WeftError,
)
from app.storage import frames
from app.storage.blocks import BLOCK, SUFFIX, Flaw, Sums, parse, scan, verify
from app.storage.frames import BadFrames, FrameIndex
from app.storage.jetstream_tail import JetStreamTail, TailState, TailWriter
from app.storage.packed import content_length, segment_files, tidy
from app.storage.read_ahead import ReadAhead
from app.storage.s3_objects import S3ObjectStore
from app.storage.segments import LocalSegmentStore, LocalSegmentWriter

log = logging.getLogger("weft.s3")
FINISHED = "finished"
RETIRED = "retired"  # every byte is in the bucket; holds the stream's size
STORED = "stored"  # a retired stream's bytes in the bucket
INDEX = ".zidx"  # a compressed segment's frame index, beside its object
DELETING = ".deleting"
SUMS_CACHE = 1024  # remote segments whose checksums are kept in memory
READY_SECONDS = 3.0  # how long check() waits for the bucket
RETRY_FIRST = 0.1  # seconds before an upload that failed is tried again, doubling
MIRROR_READ = 1024 * 1024  # bytes copied from JetStream into the local mirror at a time


def _name(index: int) -> str:
    return f"{index:08d}"


def _touch(path: Path) -> Path:
    path.touch()
    return path


def _footer(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return frames.footer_of(fd)
    finally:
        os.close(fd)


def _sidecar(path: Path) -> bytes:
    """The segment's checksums as its sidecar has them; computed from the
    segment when it has none (an empty stream's first segment, an old file)."""
    try:
        return Path(f"{path}{SUFFIX}").read_bytes()
    except FileNotFoundError:
        fd = os.open(path, os.O_RDONLY)  # FileNotFoundError: the segment went too
        try:
            return scan(fd, os.fstat(fd).st_size).encode()
        finally:
            os.close(fd)


class TieredSegmentWriter:
    """A LocalSegmentWriter that hands every segment it fills to the store for
    upload. With a tail, each append goes to JetStream first (the
    acknowledgement), then into the local files; ``size`` is what JetStream has."""

    def __init__(
        self,
        store: TieredSegmentStore,
        key: str,
        inner: LocalSegmentWriter,
        tail: TailWriter | None = None,
    ) -> None:
        self._store = store
        self._key = key
        self._inner = inner
        self._tail = tail
        self.size = inner.size if tail is None else tail.size

    async def append(self, data: bytes) -> int:
        self._store.admit(len(data))
        if self._tail is not None:
            return await self._append_tailed(self._tail, data)
        before = self.size
        try:
            return await self._inner.append(data)
        finally:
            self.size = self._inner.size
            self._store.filled(self._key, before, self.size)

    async def _append_tailed(self, tail: TailWriter, data: bytes) -> int:
        if tail.failure is not None:
            # A timeout or NATS down: go on from what JetStream holds, unless
            # someone else appended meanwhile (Fenced).
            assert self._store.tail is not None
            tail = self._tail = await self._store.tail.resume(tail)
        await self.catch_up()
        self.size = await tail.append(data)
        # Stored and acknowledged: a local failure now (507) leaves the mirror
        # behind, and the next append copies what it missed from JetStream.
        await self._mirror(data)
        return self.size

    async def catch_up(self) -> None:
        """Copy into the local files what JetStream has beyond them."""
        assert self._tail is not None and self._store.tail is not None
        end = self.size = self._tail.size
        if self._inner.size > end:
            raise StorageUnavailable(
                f"The local copy of stream {self._key} holds more bytes than JetStream."
            )
        while self._inner.size < end:
            at = self._inner.size
            data = await self._store.tail.read(self._key, at, min(MIRROR_READ, end - at))
            if not data:
                raise StorageUnavailable(f"JetStream lost the tail of stream {self._key}.")
            await self._mirror(data)

    async def _mirror(self, data: bytes) -> None:
        before = self._inner.size
        try:
            await self._inner.append(data)
        finally:
            self._store.filled(self._key, before, self._inner.size)

    async def sync(self) -> None:
        await self._inner.sync()

    async def close(self) -> None:
        await self._inner.close()
        if self._tail is not None:
            await self._tail.close()


class TieredSegmentStore:
    def __init__(
        self,
        local: LocalSegmentStore,
        objects: S3ObjectStore,
        *,
        local_root: Path,
        state_root: Path,
        segment_bytes: int,
        cache_bytes: int,
        max_pending_bytes: int,
        read_only: bool = False,
        tail: JetStreamTail | None = None,
    ) -> None:
        self._local = local
        self.tail = tail
        self._read_only = read_only  # reads only: no uploads, no eviction (weft verify)
        self._objects = objects
        self._root = local_root  # the local store's root: {key}/{index:08d}
        self._state = state_root
        self._segment_bytes = segment_bytes
        self._cache_bytes = cache_bytes
        self._max_pending = max_pending_bytes
        self._uploads: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._pending: dict[tuple[str, int], int] = {}  # bytes waiting for upload
        self.pending_bytes = 0
        self._cached: OrderedDict[tuple[str, int], int] = OrderedDict()  # uploaded, still local
        self._cached_bytes = 0
        self._reading: Counter[tuple[str, int]] = Counter()  # local reads in flight
        # The checksums (raw) or frame index (compressed) of remote segments.
        self._sums: OrderedDict[tuple[str, int], Sums | FrameIndex] = OrderedDict()
        self._ahead = ReadAhead()
        self._deletes: dict[str, asyncio.Task[None]] = {}
        self._retiring: dict[str, asyncio.Task[None]] = {}
        self._deferred: set[str] = set()  # retirements waiting for local reads to end
        self._unfinished: list[str] = []  # keys start() found not finished
        self._sealed: dict[str, int] = {}  # key -> segments from the first on that are uploaded
        self._opened = False

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Open the bucket's client (without asking the bucket anything: a start
        while it is down works) and resume the work a previous run left."""
        await self._objects.open()
        self._opened = True
        if self.tail is not None:
            await self.tail.start()
        if self._read_only:
            return
        (self._state / DELETING).mkdir(parents=True, exist_ok=True)
        todo, deleting, self._unfinished = await anyio.to_thread.run_sync(self._scan)
        for key, index, length in todo:
            self._schedule(key, index, length, resumed=True)
        for key in deleting:
            self._delete_remote_later(key)
        if todo or deleting:
            log.info("s3_resumed uploads=%d deletions=%d", len(todo), len(deleting))

    def _scan(self) -> tuple[list[tuple[str, int, int]], list[str], list[str]]:
        """Segments with no upload marker that are full or end a finished stream
        (uploaded ones are evicted from the local disk), the keys to delete from
        the bucket, and the keys not finished."""
        todo = []
        unfinished = []
        for directory in sorted(self._root.iterdir()):
            if not directory.is_dir():
                continue
            key = directory.name
            state = self._state / key
            if (state / RETIRED).exists():  # a retirement the last run did not finish
                shutil.rmtree(directory, ignore_errors=True)
                self._drop_markers(key)
                continue
            finished = (state / FINISHED).exists()
            if not finished:
                unfinished.append(key)
            tidy(directory)  # a compression a crash cut off
            found = segment_files(directory)
            waiting = 0
            for position, (index, path) in enumerate(found.items()):
                if (state / _name(index)).exists():
                    if path.stat().st_blocks:
                        self._evict_file(directory / _name(index))
                    continue
                length = content_length(path)
                last = position == len(found) - 1
                ends = finished and last and (length or not position)
                if length == self._segment_bytes or ends:
                    todo.append((key, index, length))
                    waiting += 1
            if finished and not waiting and found:  # all in the bucket: retire it
                try:
                    (state / RETIRED).write_text(str(self._local_size(key)))
                    (state / STORED).write_text(str(self._marked_bytes(key)))
                except FileNotFoundError:
                    continue  # a segment with neither a marker nor a reason to upload
                shutil.rmtree(directory, ignore_errors=True)
                self._drop_markers(key)
        deleting = sorted(p.name for p in (self._state / DELETING).iterdir())
        return todo, deleting, unfinished

    async def close(self) -> None:
        """Stop uploads and deletions; what was not finished is resumed by the next start."""
        tasks = [*self._uploads.values(), *self._deletes.values(), *self._retiring.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._uploads.clear()
        self._deletes.clear()
        self._retiring.clear()
        await self._local.close()  # waits for a compression its thread is running
        if self._opened:
            self._opened = False
            await self._objects.close()
            if self.tail is not None:
                await self.tail.close()

    async def settled(self) -> None:
        """Return once no upload or deletion is left (tests; a drained shutdown)."""
        while self._uploads or self._deletes or self._retiring:
            tasks = [*self._uploads.values(), *self._deletes.values(), *self._retiring.values()]
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- the SegmentStore contract -----------------------------------------------------

    async def create(self, key: str) -> None:
        self._forget(key)
        if (self._state / key).exists():  # an old incarnation under the same key
            await self._objects.delete_prefix(f"{key}/")
            await anyio.to_thread.run_sync(shutil.rmtree, self._state / key, True)
        if self.tail is not None:
            # An empty message at 0: the stream exists for every node from now on.
            await self.tail.delete(key)
            await TailWriter(self.tail, key, TailState(0, 0)).claim()
        await self._local.create(key)

    async def open_writer(self, key: str) -> TieredSegmentWriter:
        if self.tail is None:
            return TieredSegmentWriter(self, key, await self._local.open_writer(key))
        state = await self.tail.state(key)
        if not (self._root / key).exists():
            if not state.seq:
                raise StreamNotFound(key)
            await self._adopt(key)
        inner = await self._local.open_writer(key)
        if not state.seq:  # written before this node had a tail: JetStream starts at its end
            state = TailState(inner.size, 0)
        tail = TailWriter(self.tail, key, state)
        writer = TieredSegmentWriter(self, key, inner, tail)
        try:
            await tail.claim()  # from now on every older writer is fenced
            await writer.catch_up()
        except BaseException:
            await inner.close()
            raise
        return writer

    async def _adopt(self, key: str) -> None:
        """Local files for a stream written on another node: the segments before
        JetStream's first message are in the bucket (a purge follows the upload
        record), as sparse files with their upload markers; the writer then
        copies the rest from JetStream."""
        assert self.tail is not None
        first = await self.tail.first_offset(key)
        sealed = -(-(first or 0) // self._segment_bytes)

        def build() -> None:
            directory, state = self._root / key, self._state / key
            directory.mkdir(parents=True, exist_ok=True)
            state.mkdir(parents=True, exist_ok=True)
            for index in range(sealed):
                os.truncate(_touch(directory / _name(index)), self._segment_bytes)
                (state / _name(index)).touch()
            if not sealed:
                _touch(directory / _name(0))

        await anyio.to_thread.run_sync(build)
        log.info("tail_adopted key=%s sealed_segments=%d", key, sealed)

    async def read(self, key: str, offset: int, limit: int) -> bytes:
        if self.tail is not None and not self._mirrored(key):
            if (self._state / DELETING / key).exists():
                return b""  # deleted here: its objects are on their way out
            return await self._read_elsewhere(key, offset, limit)
        data = await self._read_here(key, offset, limit)
        if not data and self.tail is not None and not self._finished(key):
            # This node's copy may be behind (another node has taken the stream over).
            return await self._read_elsewhere(key, offset, limit)
        return data

    async def _read_elsewhere(self, key: str, offset: int, limit: int) -> bytes:
        """A stream this node has no copy of: the unsealed bytes from JetStream,
        the sealed ones (purged from JetStream) from the bucket."""
        assert self.tail is not None
        index, start = divmod(offset, self._segment_bytes)
        end = min(start + limit, self._segment_bytes)
        try:
            data = await self.tail.read(key, offset, end - start)
        except NotFound:
            return await self._read_remote(key, index, start, end)
        if data or await self.tail.last_seq(key):
            return data
        # Not in JetStream at all: finished and only in the bucket, or deleted.
        return await self._read_remote(key, index, start, end)

    async def _read_here(self, key: str, offset: int, limit: int) -> bytes:
        index, start = divmod(offset, self._segment_bytes)
        slot = (key, index)
        if slot in self._cached or not (self._uploaded(key, index) or self._retired(key)):
            if slot in self._cached:
                self._cached.move_to_end(slot)
            self._reading[slot] += 1
            try:
                data = await self._local.read(key, offset, limit)
                # A local store that returns views (no copy) gets one here, so that
                # this type-checks with either; return the view once both agree.
                return data if isinstance(data, bytes) else bytes(data)
            finally:
                self._reading[slot] -= 1
                if not self._reading[slot]:
                    del self._reading[slot]
                    self._evict()
                    if key in self._deferred:
                        self._deferred.discard(key)
                        self._maybe_retire(key)
        return await self._read_remote(key, index, start, min(start + limit, self._segment_bytes))

    async def size(self, key: str) -> int:
        try:
            here: int | None = await self._size_here(key)
        except StreamNotFound:
            here = None
        if self.tail is not None:
            state = await self.tail.state(key)
            if state.seq:  # JetStream has the truth, this node perhaps an old copy
                return max(here or 0, state.size)
        if here is None:
            raise StreamNotFound(key)
        return here

    async def _size_here(self, key: str) -> int:
        try:
            return await self._local.size(key)
        except StreamNotFound:
            try:
                return int((self._state / key / RETIRED).read_text())
            except (FileNotFoundError, ValueError):
                raise StreamNotFound(key) from None

    async def trim(self, key: str, size: int) -> None:
        """Cut at size. The segment cut into is made whole on local disk first
        (it may be only in the bucket), and its objects and those of every later
        segment are removed: the bucket never holds bytes the stream lost."""
        index = size // self._segment_bytes
        self._sealed.pop(key, None)
        for slot in [s for s in {*self._uploads, *self._pending} if s[0] == key]:
            if slot[1] >= index:
                self._cancel(slot)
        state = self._state / key
        # Listed before the restore, which drops the marker of the segment cut into.
        later = (
            sorted(int(p.name) for p in state.iterdir() if p.name.isdigit())
            if state.exists()
            else []
        )
        if self._uploaded(key, index) and (key, index) not in self._cached:
            await self._restore(key, index)
        for number in [n for n in later if n >= index]:
            await self._objects.delete_prefix(f"{key}/{_name(number)}")
            (state / _name(number)).unlink(missing_ok=True)
            self._uncache((key, number))
            self._sums.pop((key, number), None)
        self._ahead.forget(key)
        await self._local.trim(key, size)

    async def delete(self, key: str) -> None:
        """Local bytes go now, the bucket's in the background (a DELETE must not
        wait on, or fail with, a bucket that is down)."""
        cancelled = self._forget(key)
        marker = self._state / DELETING / key

        def local() -> None:
            marker.touch()
            shutil.rmtree(self._state / key, ignore_errors=True)

        await anyio.to_thread.run_sync(local)
        await self._local.delete(key)
        await self._drop_tail(key)
        self._delete_remote_later(key, cancelled)

    async def hand_off(self, key: str) -> None:
        """Another node writes the stream now: with a tail, this node's files are
        a mirror it may have outgrown, so they go (its uploads too: the new
        writer mirrors from JetStream whatever the bucket lacks, and uploads it).
        Reads here then go to JetStream and the bucket; a later takeover adopts
        afresh. Without a tail the local files are the only copy: kept."""
        if self.tail is None:
            return
        self._forget(key)
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(self._state / key, ignore_errors=True))
        await self._local.delete(key)
        log.info("tail_handed_off key=%s", key)

    async def finish(self, key: str) -> None:
        """The stream gets no more bytes: its last, partial segment is uploaded too."""
        if self.tail is not None:
            # This node's copy may be missing or behind (the stream was written
            # elsewhere): a writer brings it up to JetStream's end, and fences
            # any other writer, before the last segment is uploaded from it.
            try:
                await (await self.open_writer(key)).close()
            except WeftError as exc:
                log.warning("s3_finish_failed key=%s error=%s", key, exc.message)
                return
        try:
            size = await self._local.size(key)
            (self._state / key).mkdir(parents=True, exist_ok=True)
            (self._state / key / FINISHED).touch()
        except (StreamNotFound, OSError) as exc:
            log.warning("s3_finish_failed key=%s error=%s", key, exc)
            return
        index, used = divmod(size, self._segment_bytes)
        if used or not size:  # an empty stream gets an empty object: it exists
            self._schedule(key, index, used)
        else:
            self._maybe_retire(key)

    async def unfinished(self) -> list[str]:
        return list(self._unfinished)

    async def check(self) -> None:
        try:
            await self._local.check()
        except NotReady:
            raise NotReady("The local disk of the segment store cannot be written.") from None
        if self.tail is not None:
            await self.tail.check()
        try:
            # Bounded: a readiness probe gives up after a few seconds, and the
            # retries of a bucket that is down would take far longer.
            await asyncio.wait_for(self._objects.check(), READY_SECONDS)
        except StorageUnavailable as exc:
            raise StorageUnavailable(f"S3 is not available: {exc.message}") from None
        except TimeoutError:
            raise StorageUnavailable(
                f"S3 is not available: the bucket did not answer within {READY_SECONDS:g} s."
            ) from None

    # -- uploads ----------------------------------------------------------------------

    def admit(self, incoming: int) -> None:
        """Raise StorageUnavailable (503) while too many bytes wait for upload."""
        if self.pending_bytes and self.pending_bytes + incoming > self._max_pending:
            raise StorageUnavailable(
                f"S3 is not keeping up: {self.pending_bytes} bytes wait for upload "
                f"(s3.max_pending_bytes {self._max_pending}); try again later."
            )

    def filled(self, key: str, before: int, after: int) -> None:
        """An append took the size from before to after: upload what it filled."""
        for index in range(before // self._segment_bytes, after // self._segment_bytes):
            self._schedule(key, index, self._segment_bytes)

    def _schedule(self, key: str, index: int, length: int, *, resumed: bool = False) -> None:
        slot = (key, index)
        if slot in self._uploads:
            return
        self._pending[slot] = length
        self.pending_bytes += length
        task = asyncio.create_task(self._upload(key, index, length, resumed))
        self._uploads[slot] = task
        task.add_done_callback(lambda done: self._upload_done(slot, done))

    def _upload_done(self, slot: tuple[str, int], task: asyncio.Task[None]) -> None:
        if self._uploads.get(slot) is task:
            del self._uploads[slot]
            self._settle(slot)
        if not task.cancelled() and task.exception() is not None:
            log.error("s3_upload_failed key=%s segment=%d", *slot, exc_info=task.exception())

    def _settle(self, slot: tuple[str, int]) -> None:
        self.pending_bytes -= self._pending.pop(slot, 0)

    def _cancel(self, slot: tuple[str, int]) -> None:
        task = self._uploads.pop(slot, None)
        if task is not None:
            task.cancel()
        self._settle(slot)

    async def _upload(self, key: str, index: int, length: int, resumed: bool) -> None:
        """resumed: a previous run may have died in the middle of this upload."""
        name = f"{key}/{_name(index)}"
        path = self._root / key / _name(index)
        delay = RETRY_FIRST
        cap = max(RETRY_FIRST, self._objects.settings.backoff_max_seconds)
        leftovers = resumed  # multipart uploads of this segment may be left unfinished
        packed = Path(f"{path}{frames.SUFFIX}")
        if self._local.compression == "zstd" and length:
            await self._local.compress(key, index)  # stays raw if it fails its checksums
        while True:
            try:
                if packed.exists():  # compressed now, or by a run that had it on
                    index_ = await anyio.to_thread.run_sync(_footer, packed)
                    await self._objects.put_object_multipart(name + frames.SUFFIX, packed)
                    await self._objects.put_object_multipart(name + INDEX, index_)
                    stored = packed.stat().st_size
                else:
                    sums = await anyio.to_thread.run_sync(_sidecar, path)
                    await self._objects.put_object_multipart(name, path)
                    await self._objects.put_object_multipart(name + SUFFIX, sums)
                    stored = length
                break
            except FileNotFoundError:
                return  # deleted or trimmed meanwhile
            except StorageUnavailable as exc:
                # Its abort may have failed too (the bucket was down): tidy up later.
                leftovers = True
                log.warning("s3_upload_retry key=%s segment=%d error=%s", key, index, exc.message)
                await asyncio.sleep(delay)
                delay = min(cap, delay * 2)
        if leftovers:
            await self._abort_leftovers(name)
        state = self._state / key
        state.mkdir(parents=True, exist_ok=True)
        (state / _name(index)).write_text(str(stored))
        self._settle((key, index))
        await self._purge_tail(key)
        if length:  # an empty segment has nothing worth caching
            self._cached[(key, index)] = length
            self._cached_bytes += length
            self._evict()
        self._maybe_retire(key)
        log.debug("s3_uploaded key=%s segment=%d bytes=%d", key, index, length)

    async def _abort_leftovers(self, name: str) -> None:
        """Abort the unfinished multipart uploads of a segment just stored (the
        name covers its .crc too). Best effort: delete_prefix finds any left."""
        try:
            if count := await self._objects.abort_uploads(name):
                log.info("s3_aborted_leftovers name=%s uploads=%d", name, count)
        except (StorageUnavailable, NotFound) as exc:
            log.warning("s3_abort_leftovers_failed name=%s error=%s", name, exc.message)

    # -- the JetStream tail ----------------------------------------------------------------

    async def _purge_tail(self, key: str) -> None:
        """Drop from JetStream the segments the bucket now holds, but only from
        the first on: the first byte JetStream keeps is where the bucket's
        unbroken run of segments ends (a node taking over relies on it). A
        failed purge is retried by the next."""
        if self.tail is None:
            return
        sealed = self._sealed.get(key, 0)
        while self._uploaded(key, sealed):
            sealed += 1
        self._sealed[key] = sealed
        try:
            await self.tail.purge(key, sealed * self._segment_bytes)
        except WeftError as exc:
            log.warning("tail_purge_failed key=%s error=%s", key, exc.message)

    async def _drop_tail(self, key: str) -> None:
        if self.tail is None:
            return
        try:
            await self.tail.delete(key)
        except WeftError as exc:  # its messages stay; the key is never used again
            log.warning("tail_delete_failed key=%s error=%s", key, exc.message)

    def _mirrored(self, key: str) -> bool:
        return os.path.exists(f"{self._root}/{key}") or self._retired(key)

    def _finished(self, key: str) -> bool:
        return os.path.exists(f"{self._state}/{key}/{FINISHED}") or self._retired(key)

    # -- the local cache -----------------------------------------------------------------

    def _uploaded(self, key: str, index: int) -> bool:
        return os.path.exists(f"{self._state}/{key}/{_name(index)}")

    def _retired(self, key: str) -> bool:
        return os.path.exists(f"{self._state}/{key}/{RETIRED}")

    def _maybe_retire(self, key: str) -> None:
        """A finished stream with every segment in the bucket and none left in
        the cache leaves the local disk, but for the marker that holds its size."""
        if self._read_only or key in self._retiring:
            return
        if self._busy(key):
            if any(slot[0] == key for slot in self._reading):
                self._deferred.add(key)  # tried again when those reads end
            return
        if not (self._state / key / FINISHED).exists():
            return
        task = asyncio.create_task(self._retire(key))
        self._retiring[key] = task
        task.add_done_callback(lambda _: self._retiring.pop(key, None))

    async def _retire(self, key: str) -> None:
        try:
            size = await anyio.to_thread.run_sync(self._local_size, key)
            if self._busy(key):  # a read or an upload began meanwhile
                if any(slot[0] == key for slot in self._reading):
                    self._deferred.add(key)
                return
            stored = await anyio.to_thread.run_sync(self._marked_bytes, key)
            (self._state / key / STORED).write_text(str(stored))
            (self._state / key / RETIRED).write_text(str(size))
        except FileNotFoundError:  # deleted, or not every segment is up
            return
        await self._local.delete(key)
        await anyio.to_thread.run_sync(self._drop_markers, key)
        self._sealed.pop(key, None)
        await self._drop_tail(key)
        log.debug("s3_retired key=%s size=%d", key, size)

    def _busy(self, key: str) -> bool:
        """Something of key's is still waiting, cached or being read locally."""
        return any(slot[0] == key for slot in (*self._pending, *self._cached, *self._reading))

    def _local_size(self, key: str) -> int:
        """The stored size, from the local files, once every one has its marker."""
        found = segment_files(self._root / key)
        if not found or not all((self._state / key / _name(i)).exists() for i in found):
            raise FileNotFoundError(key)
        return (len(found) - 1) * self._segment_bytes + content_length(found[max(found)])

    def _marked_bytes(self, key: str) -> int:
        """The bytes of the stream's objects in the bucket, from the upload
        markers (an empty marker, from before they held it: the segment's length)."""
        total = 0
        for index, path in segment_files(self._root / key).items():
            text = (self._state / key / _name(index)).read_text().strip()
            total += int(text) if text.isdigit() else content_length(path)
        return total

    async def stored_bytes(self, key: str) -> int:
        """What the stream takes at rest: its objects in the bucket and the
        segments not uploaded yet (a node with no copy lists the bucket)."""

        def here() -> int | None:
            state = self._state / key
            with contextlib.suppress(FileNotFoundError, ValueError):
                return int((state / STORED).read_text())
            try:
                found = segment_files(self._root / key)
            except FileNotFoundError:
                return None
            total = 0
            for index, path in found.items():
                try:
                    text = (state / _name(index)).read_text().strip()
                except FileNotFoundError:
                    total += path.stat().st_size  # not uploaded: raw or compressed here
                    continue
                total += int(text) if text.isdigit() else content_length(path)
            return total

        total = await anyio.to_thread.run_sync(here)
        if total is not None:
            return total
        listed = 0
        async for item in self._objects.list_prefix(f"{key}/"):
            if not item.key.endswith((SUFFIX, INDEX)):
                listed += item.size
        return listed

    def _drop_markers(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            for path in (self._state / key).iterdir():
                if path.name.isdigit():
                    path.unlink(missing_ok=True)

    def _evict(self) -> None:
        """Drop the least recently used uploaded segments over cache_bytes, except
        those a local read is in."""
        if self._cached_bytes <= self._cache_bytes:
            return
        for slot in list(self._cached):
            if self._cached_bytes <= self._cache_bytes:
                return
            if self._reading.get(slot):
                continue
            self._uncache(slot)
            key, index = slot
            self._evict_file(self._root / key / _name(index))
            self._maybe_retire(key)

    def _uncache(self, slot: tuple[str, int]) -> None:
        self._cached_bytes -= self._cached.pop(slot, 0)

    @staticmethod
    def _evict_file(path: Path) -> None:
        """Free the segment's disk space but keep its length (a sparse raw
        file, also in place of a compressed one)."""
        packed = Path(f"{path}{frames.SUFFIX}")
        try:
            if packed.exists():
                length = content_length(packed)
                os.truncate(_touch(path), 0)
                os.truncate(path, length)
                packed.unlink()
            else:
                length = path.stat().st_size
                os.truncate(path, 0)
                os.truncate(path, length)
            Path(f"{path}{SUFFIX}").unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    async def _restore(self, key: str, index: int) -> None:
        """Copy an evicted segment back from the bucket into its local file."""
        path = self._root / key / _name(index)
        layout = await self._remote_layout(key, index)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            at = 0
            if isinstance(layout, FrameIndex):
                for frame in layout.frames:
                    chunk = await self._read_remote(key, index, at, at + frame.length)
                    os.pwrite(fd, chunk, at)
                    at += len(chunk)
            else:
                async for chunk in self._objects.get_range(
                    f"{key}/{_name(index)}", 0, self._segment_bytes
                ):
                    os.pwrite(fd, chunk, at)
                    at += len(chunk)
            os.ftruncate(fd, at)
        finally:
            os.close(fd)
        (self._state / key / _name(index)).unlink(missing_ok=True)

    def _forget(self, key: str) -> list[asyncio.Task[None]]:
        """Drop what this store holds about key; return its cancelled uploads."""
        cancelled = [task for slot, task in self._uploads.items() if slot[0] == key]
        retiring = self._retiring.pop(key, None)
        if retiring is not None:
            retiring.cancel()
        self._deferred.discard(key)
        self._sealed.pop(key, None)
        for slot in [s for s in {*self._uploads, *self._pending} if s[0] == key]:
            self._cancel(slot)
        for slot in [s for s in self._cached if s[0] == key]:
            self._uncache(slot)
        for slot in [s for s in self._sums if s[0] == key]:
            del self._sums[slot]
        self._ahead.forget(key)
        return cancelled

    # -- the bucket ----------------------------------------------------------------------

    async def _read_remote(self, key: str, index: int, start: int, end: int) -> bytes:
        """Whole blocks by a ranged GET, each checked against the segment's
        checksums; a read that goes on where the last one ended fetches ahead."""
        at = index * self._segment_bytes
        ahead = self._ahead.take(key, index, start, end)
        if ahead is not None:
            self._ahead.read_to(key, at + start + len(ahead))
            return ahead
        first, last = start // BLOCK, -(-end // BLOCK)
        base = first * BLOCK
        name = f"{key}/{_name(index)}"
        try:
            sums = await self._remote_layout(key, index)
            if isinstance(sums, FrameIndex):
                return await self._read_frames(key, index, sums, start, end)
            limit = min(last * BLOCK, self._segment_bytes)
            sequential = self._ahead.sequential(key, at + start)
            if sequential:
                limit = min(max(limit, base + self._ahead.ahead), self._segment_bytes)
            raw = b"".join([c async for c in self._objects.get_range(name, base, limit)])
        except NotFound:
            return b""  # deleted meanwhile
        good, bad = verify(sums, raw, first, max(last - first, -(-len(raw) // BLOCK)))
        stop = min(end, base + good)
        if stop > start:
            self._ahead.read_to(key, at + stop)
            if sequential and base + good > end:
                self._ahead.keep(key, index, base, raw[:good])
        if stop <= start:
            if bad is None:
                return b""
            at = index * self._segment_bytes + bad.at
            raise CorruptBlock(
                key, index, bad.block, at, bad.flaw.value, uncovered=bad.flaw is Flaw.UNCHECKED
            )
        return raw[start - base : stop - base]

    async def _read_frames(
        self, key: str, index: int, found: FrameIndex, start: int, end: int
    ) -> bytes:
        """Content from start of a compressed segment in the bucket, up to the
        end of the frame start is in (one frame fetched and decoded per read)."""
        chosen = found.span(start, end)
        if not chosen:
            return b""
        frame = chosen[0]
        name = f"{key}/{_name(index)}{frames.SUFFIX}"
        stored = b"".join(
            [c async for c in self._objects.get_range(name, frame.at, frame.at + frame.stored)]
        )
        try:
            content = await anyio.to_thread.run_sync(frames.decode_frame, frame, stored)
        except BadFrames as exc:
            at = index * self._segment_bytes + frame.start
            raise CorruptBlock(
                key, index, frame.start // BLOCK, at, str(exc), uncovered=False
            ) from None
        return content[start - frame.start : end - frame.start]

    async def _remote_layout(self, key: str, index: int) -> Sums | FrameIndex:
        """A remote segment's checksums (raw) or frame index (compressed),
        whichever it has: the form the setting writes is looked for first.
        Raises NotFound when it has neither."""
        slot = (key, index)
        sums = self._sums.get(slot)
        if sums is not None:
            self._sums.move_to_end(slot)
            return sums
        name = f"{key}/{_name(index)}"
        forms = [INDEX, SUFFIX] if self._local.compression == "zstd" else [SUFFIX, INDEX]
        for form in forms:
            try:
                raw = b"".join([c async for c in self._objects.get_range(name + form, 0, 1 << 30)])
                break
            except NotFound:
                if form == forms[-1]:
                    raise
        parsed: Sums | FrameIndex | None
        if form == INDEX:
            try:
                parsed = frames.parse_footer(raw)
            except BadFrames:
                parsed = None
        else:
            parsed = parse(raw)
        if parsed is None:
            at = index * self._segment_bytes
            raise CorruptBlock(key, index, 0, at, "unreadable checksums", uncovered=False)
        self._sums[slot] = parsed
        if len(self._sums) > SUMS_CACHE:
            self._sums.popitem(last=False)
        return parsed

    def _delete_remote_later(self, key: str, uploads: Sequence[asyncio.Task[None]] = ()) -> None:
        if key in self._deletes:
            return
        task = asyncio.create_task(self._delete_remote(key, uploads))
        self._deletes[key] = task
        task.add_done_callback(lambda _: self._deletes.pop(key, None))

    async def _delete_remote(self, key: str, uploads: Sequence[asyncio.Task[None]]) -> None:
        # Cancelled uploads first abort their multipart uploads; a PUT that was
        # already sent must not land after the listing below.
        await asyncio.gather(*uploads, return_exceptions=True)
        delay = RETRY_FIRST
        cap = max(RETRY_FIRST, self._objects.settings.backoff_max_seconds)
        while True:
            try:
                await self._objects.delete_prefix(f"{key}/")
                break
            except StorageUnavailable as exc:
                log.warning("s3_delete_retry key=%s error=%s", key, exc.message)
                await asyncio.sleep(delay)
                delay = min(cap, delay * 2)
        with contextlib.suppress(FileNotFoundError):
            (self._state / DELETING / key).unlink()
