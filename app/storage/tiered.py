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

from app.errors import CorruptBlock, NotFound, NotReady, StorageUnavailable, StreamNotFound
from app.storage.blocks import BLOCK, SUFFIX, Flaw, Sums, parse, scan, verify
from app.storage.s3_objects import S3ObjectStore
from app.storage.segments import LocalSegmentStore, LocalSegmentWriter

log = logging.getLogger("weft.s3")
FINISHED = "finished"
RETIRED = "retired"  # every byte is in the bucket; holds the stream's size
DELETING = ".deleting"
SUMS_CACHE = 1024  # remote segments whose checksums are kept in memory
READY_SECONDS = 3.0  # how long check() waits for the bucket
RETRY_FIRST = 0.1  # seconds before an upload that failed is tried again, doubling


def _name(index: int) -> str:
    return f"{index:08d}"


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
    """A LocalSegmentWriter that hands every segment it fills to the store for upload."""

    def __init__(self, store: TieredSegmentStore, key: str, inner: LocalSegmentWriter) -> None:
        self._store = store
        self._key = key
        self._inner = inner
        self.size = inner.size

    async def append(self, data: bytes) -> int:
        self._store.admit(len(data))
        before = self.size
        try:
            return await self._inner.append(data)
        finally:
            self.size = self._inner.size
            self._store.filled(self._key, before, self.size)

    async def sync(self) -> None:
        await self._inner.sync()

    async def close(self) -> None:
        await self._inner.close()


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
    ) -> None:
        self._local = local
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
        self._sums: OrderedDict[tuple[str, int], Sums] = OrderedDict()
        self._deletes: dict[str, asyncio.Task[None]] = {}
        self._retiring: dict[str, asyncio.Task[None]] = {}
        self._deferred: set[str] = set()  # retirements waiting for local reads to end
        self._opened = False

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Open the bucket's client (without asking the bucket anything: a start
        while it is down works) and resume the work a previous run left."""
        await self._objects.open()
        self._opened = True
        if self._read_only:
            return
        (self._state / DELETING).mkdir(parents=True, exist_ok=True)
        todo, deleting = await anyio.to_thread.run_sync(self._scan)
        for key, index, length in todo:
            self._schedule(key, index, length)
        for key in deleting:
            self._delete_remote_later(key)
        if todo or deleting:
            log.info("s3_resumed uploads=%d deletions=%d", len(todo), len(deleting))

    def _scan(self) -> tuple[list[tuple[str, int, int]], list[str]]:
        """Segments with no upload marker that are full or end a finished stream;
        uploaded ones are evicted from the local disk."""
        todo = []
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
            names = sorted(p.name for p in directory.iterdir() if p.name.isdigit())
            waiting = 0
            for position, name in enumerate(names):
                path = directory / name
                if (state / name).exists():
                    if path.stat().st_blocks:
                        self._evict_file(path)
                    continue
                length = path.stat().st_size
                last = position == len(names) - 1
                ends = finished and last and (length or not position)
                if length == self._segment_bytes or ends:
                    todo.append((key, int(name), length))
                    waiting += 1
            if finished and not waiting and names:  # all in the bucket: retire it
                try:
                    (state / RETIRED).write_text(str(self._local_size(key)))
                except FileNotFoundError:
                    continue  # a segment with neither a marker nor a reason to upload
                shutil.rmtree(directory, ignore_errors=True)
                self._drop_markers(key)
        deleting = sorted(p.name for p in (self._state / DELETING).iterdir())
        return todo, deleting

    async def close(self) -> None:
        """Stop uploads and deletions; what was not finished is resumed by the next start."""
        tasks = [*self._uploads.values(), *self._deletes.values(), *self._retiring.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._uploads.clear()
        self._deletes.clear()
        self._retiring.clear()
        if self._opened:
            self._opened = False
            await self._objects.close()

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
        await self._local.create(key)

    async def open_writer(self, key: str) -> TieredSegmentWriter:
        return TieredSegmentWriter(self, key, await self._local.open_writer(key))

    async def read(self, key: str, offset: int, limit: int) -> bytes:
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
        for slot in [s for s in {*self._uploads, *self._pending} if s[0] == key]:
            if slot[1] >= index:
                self._cancel(slot)
        if self._uploaded(key, index) and (key, index) not in self._cached:
            await self._restore(key, index)
        state = self._state / key
        later = (
            sorted(int(p.name) for p in state.iterdir() if p.name.isdigit())
            if state.exists()
            else []
        )
        for number in [n for n in later if n >= index]:
            await self._objects.delete_prefix(f"{key}/{_name(number)}")
            (state / _name(number)).unlink(missing_ok=True)
            self._uncache((key, number))
            self._sums.pop((key, number), None)
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
        self._delete_remote_later(key, cancelled)

    async def finish(self, key: str) -> None:
        """The stream gets no more bytes: its last, partial segment is uploaded too."""
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

    async def check(self) -> None:
        try:
            await self._local.check()
        except NotReady:
            raise NotReady("The local disk of the segment store cannot be written.") from None
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

    def _schedule(self, key: str, index: int, length: int) -> None:
        slot = (key, index)
        if slot in self._uploads:
            return
        self._pending[slot] = length
        self.pending_bytes += length
        task = asyncio.create_task(self._upload(key, index, length))
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

    async def _upload(self, key: str, index: int, length: int) -> None:
        name = f"{key}/{_name(index)}"
        path = self._root / key / _name(index)
        delay = RETRY_FIRST
        cap = max(RETRY_FIRST, self._objects.settings.backoff_max_seconds)
        while True:
            try:
                sums = await anyio.to_thread.run_sync(_sidecar, path)
                await self._objects.put_object_multipart(name, path)
                await self._objects.put_object_multipart(name + SUFFIX, sums)
                break
            except FileNotFoundError:
                return  # deleted or trimmed meanwhile
            except StorageUnavailable as exc:
                log.warning("s3_upload_retry key=%s segment=%d error=%s", key, index, exc.message)
                await asyncio.sleep(delay)
                delay = min(cap, delay * 2)
        state = self._state / key
        state.mkdir(parents=True, exist_ok=True)
        (state / _name(index)).touch()
        self._settle((key, index))
        if length:  # an empty segment has nothing worth caching
            self._cached[(key, index)] = length
            self._cached_bytes += length
            self._evict()
        self._maybe_retire(key)
        log.debug("s3_uploaded key=%s segment=%d bytes=%d", key, index, length)

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
            (self._state / key / RETIRED).write_text(str(size))
        except FileNotFoundError:  # deleted, or not every segment is up
            return
        await self._local.delete(key)
        await anyio.to_thread.run_sync(self._drop_markers, key)
        log.debug("s3_retired key=%s size=%d", key, size)

    def _busy(self, key: str) -> bool:
        """Something of key's is still waiting, cached or being read locally."""
        return any(slot[0] == key for slot in (*self._pending, *self._cached, *self._reading))

    def _local_size(self, key: str) -> int:
        """The stored size, from the local files, once every one has its marker."""
        directory = self._root / key
        names = sorted(p.name for p in directory.iterdir() if p.name.isdigit())
        if not names or not all((self._state / key / name).exists() for name in names):
            raise FileNotFoundError(key)
        return (len(names) - 1) * self._segment_bytes + (directory / names[-1]).stat().st_size

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
        """Free the segment's disk space but keep its length (a sparse file)."""
        try:
            length = path.stat().st_size
            os.truncate(path, 0)
            os.truncate(path, length)
            Path(f"{path}{SUFFIX}").unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    async def _restore(self, key: str, index: int) -> None:
        """Copy an evicted segment back from the bucket into its local file."""
        path = self._root / key / _name(index)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            at = 0
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
        for slot in [s for s in {*self._uploads, *self._pending} if s[0] == key]:
            self._cancel(slot)
        for slot in [s for s in self._cached if s[0] == key]:
            self._uncache(slot)
        for slot in [s for s in self._sums if s[0] == key]:
            del self._sums[slot]
        return cancelled

    # -- the bucket ----------------------------------------------------------------------

    async def _read_remote(self, key: str, index: int, start: int, end: int) -> bytes:
        """Whole blocks by a ranged GET, each checked against the segment's checksums."""
        first, last = start // BLOCK, -(-end // BLOCK)
        base = first * BLOCK
        name = f"{key}/{_name(index)}"
        try:
            sums = await self._remote_sums(key, index)
            limit = min(last * BLOCK, self._segment_bytes)
            raw = b"".join([c async for c in self._objects.get_range(name, base, limit)])
        except NotFound:
            return b""  # deleted meanwhile
        good, bad = verify(sums, raw, first, last - first)
        stop = min(end, base + good)
        if stop <= start:
            if bad is None:
                return b""
            at = index * self._segment_bytes + bad.at
            raise CorruptBlock(
                key, index, bad.block, at, bad.flaw.value, uncovered=bad.flaw is Flaw.UNCHECKED
            )
        return raw[start - base : stop - base]

    async def _remote_sums(self, key: str, index: int) -> Sums:
        slot = (key, index)
        sums = self._sums.get(slot)
        if sums is not None:
            self._sums.move_to_end(slot)
            return sums
        name = f"{key}/{_name(index)}{SUFFIX}"
        raw = b"".join([c async for c in self._objects.get_range(name, 0, 1 << 30)])
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
