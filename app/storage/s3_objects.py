"""An S3 bucket as Weft uses it: multipart uploads of segments with bounded memory,
ranged reads, listing and deletion by prefix (SPEC §12.1).

Built on aiobotocore 3.x (signing, parsing and the whole S3 API, UploadPartCopy and
the multipart housekeeping included); ``bench/s3clients.py`` measured it against
obstore and aioboto3. Retries are Weft's own (botocore's are switched off) so that
every request, and every attempt of it, counts against one per-node limit:

* ``max_concurrency`` slots per store (one store per node). A slot is taken before
  an upload part is read from its source and given back when the part is stored,
  so parts held never exceed ``part_bytes × max_concurrency``, however many
  uploads run (each part once: see ``_Body`` and ``_map_large_buffers``). Every
  other write, HEAD, LIST and DELETE takes a slot per attempt.
  Ranged reads stream through small buffers on a connection pool of their own and
  take no slot: a slow reader never holds up an upload.
* ``retries`` further attempts on timeouts, dropped connections, 5xx and
  throttling, after an exponential backoff with full jitter; then
  ``StorageUnavailable`` (503), as for any other bucket that cannot be used
  (unknown bucket, refused credentials). A missing key is ``NotFound``.

Keys are relative to the store's ``prefix`` (``s3://BUCKET/PREFIX``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import io
import logging
import os
import random
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.handlers import add_expect_header

from app.errors import ConfigError, NotFound, StorageUnavailable

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger("weft.s3")

MiB = 1024 * 1024
MIN_PART_BYTES = 5 * MiB  # S3's minimum for every part but the last
MAX_PART_BYTES = 5 * 1024 * MiB
MAX_PARTS = 10_000
READ_CHUNK_BYTES = 256 * 1024  # what get_range yields at a time
READ_CONNECTIONS = 64
M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD = 4 * MiB  # below MIN_PART_BYTES, above the 1 MiB blocks of reads

# Error codes S3 (and S3-compatible stores) use for "slow down" and transient faults.
RETRYABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
    }
)
MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
# Connection refused or reset, DNS, timeouts, a body cut short (botocore wraps
# aiohttp's errors in most, not all, cases).
RETRYABLE_ERRORS = (
    BotoConnectionError,
    HTTPClientError,
    aiohttp.ClientError,
    TimeoutError,
    OSError,
)

T = TypeVar("T")
Source = bytes | str | os.PathLike[str] | IO[bytes] | AsyncIterable[bytes] | Iterable[bytes]


@dataclass(frozen=True)
class S3Settings:
    """SPEC §12.1's ``s3.*`` keys. Unset endpoint, region and credentials fall back
    to botocore's own lookup: ``AWS_ENDPOINT_URL``, ``AWS_REGION`` /
    ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
    ``AWS_SESSION_TOKEN``, the shared config files, then instance roles."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    part_bytes: int = 8 * MiB
    max_concurrency: int = 4
    retries: int = 8
    # Not configuration keys: tests shorten them.
    timeout_seconds: float = 30.0
    backoff_base_seconds: float = 0.1
    backoff_max_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not MIN_PART_BYTES <= self.part_bytes <= MAX_PART_BYTES:
            raise ConfigError(
                f"s3.part_bytes must be between {MIN_PART_BYTES} and {MAX_PART_BYTES}"
            )
        if self.max_concurrency < 1:
            raise ConfigError("s3.max_concurrency must be at least 1")
        if self.retries < 0:
            raise ConfigError("s3.retries must not be negative")


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store's prefix
    size: int
    etag: str


class _Retryable(Exception):
    """One attempt failed in a way that another attempt may not."""


class S3ObjectStore:
    """One bucket (and prefix). ``async with S3ObjectStore(...) as store:`` or
    ``await store.open()`` / ``await store.close()``. Safe for concurrent use by many
    tasks of one event loop."""

    def __init__(self, bucket: str, settings: S3Settings | None = None, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.settings = settings or S3Settings()
        self._slots = asyncio.Semaphore(self.settings.max_concurrency)
        self._stack = contextlib.AsyncExitStack()
        self._client: S3Client | None = None
        self._reader: S3Client | None = None

    async def open(self) -> S3ObjectStore:
        _map_large_buffers()
        session = get_session()
        s = self.settings
        common: dict[str, Any] = {
            "region_name": s.region,
            "endpoint_url": s.endpoint_url,
            "aws_access_key_id": s.access_key_id,
            "aws_secret_access_key": s.secret_access_key,
        }

        def config(connections: int) -> AioConfig:
            return AioConfig(
                retries={"total_max_attempts": 1},  # ours, below
                connect_timeout=s.timeout_seconds,
                read_timeout=s.timeout_seconds,
                max_pool_connections=connections,
                # botocore's default CRC32 of every part costs CPU and S3 does not need it.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                # Virtual-hosted names (BUCKET.127.0.0.1) only resolve at AWS.
                s3={"addressing_style": "path"} if self._custom_endpoint() else None,
            )

        self._client = await self._stack.enter_async_context(
            session.create_client("s3", config=config(s.max_concurrency), **common)
        )
        self._reader = await self._stack.enter_async_context(
            session.create_client("s3", config=config(READ_CONNECTIONS), **common)
        )
        for client in (self._client, self._reader):
            # aiohttp waits for "100 Continue" without any timeout: a server that
            # accepts the connection and then hangs would hang every upload.
            client.meta.events.unregister("before-call.s3", add_expect_header)
        return self

    def _custom_endpoint(self) -> bool:
        return bool(
            self.settings.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = self._reader = None

    async def __aenter__(self) -> S3ObjectStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the operations ----------------------------------------------------------------

    async def put_object_multipart(
        self, key: str, source: Source, part_bytes: int | None = None
    ) -> ObjectInfo:
        """Store everything ``source`` yields (bytes, a path, a binary file, or an
        iterable or async iterable of bytes) as ``key``: one PUT when it fits in one part,
        else a multipart upload in ``part_bytes`` parts (the settings' by default),
        which is aborted if it fails. Raises StorageUnavailable."""
        part_bytes = part_bytes or self.settings.part_bytes
        if not MIN_PART_BYTES <= part_bytes <= MAX_PART_BYTES:
            raise ValueError(f"part_bytes {part_bytes} is outside S3's limits")
        name = self.prefix + key
        async with _PartReader.of(source) as reader:
            await self._slots.acquire()
            slot_held = True
            try:
                first = await reader.read(part_bytes)
                if len(first) < part_bytes:  # the whole object: no multipart needed
                    size = len(first)
                    whole, first = _Body(first), b""
                    reply = await self._retrying(
                        "PutObject",
                        lambda: self._writer.put_object(
                            Bucket=self.bucket, Key=name, Body=whole.rewound()
                        ),
                        take_slot=False,
                    )
                    return ObjectInfo(key, size, reply["ETag"])
                upload = await self._retrying(
                    "CreateMultipartUpload",
                    lambda: self._writer.create_multipart_upload(Bucket=self.bucket, Key=name),
                    take_slot=False,
                )
                slot_held = False  # the first part's task owns it now
                # Handed over in a list the callee empties: this frame must not
                # hold the part.
                handed, first = [first], b""
                return await self._upload_parts(
                    name, key, upload["UploadId"], handed, reader, part_bytes
                )
            finally:
                if slot_held:
                    self._slots.release()

    async def _upload_parts(
        self,
        name: str,
        key: str,
        upload_id: str,
        handed: list[bytes],
        reader: _PartReader,
        part_bytes: int,
    ) -> ObjectInfo:
        parts: list[CompletedPartTypeDef] = []
        tasks: set[asyncio.Task[None]] = set()
        failed: list[BaseException] = []

        async def send(number: int, part: _Body) -> None:
            try:
                reply = await self._retrying(
                    "UploadPart",
                    lambda: self._writer.upload_part(
                        Bucket=self.bucket,
                        Key=name,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=part.rewound(),
                    ),
                    take_slot=False,
                )
                parts.append({"PartNumber": number, "ETag": reply["ETag"]})
            except Exception as exc:  # kept for the uploader; nobody awaits this task
                failed.append(exc)
            finally:
                self._slots.release()

        def start(number: int, body: bytes) -> None:
            task = asyncio.create_task(send(number, _Body(body)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        size = len(handed[0])
        try:
            start(1, handed.pop())
            number = 1
            while True:
                await self._slots.acquire()  # before reading: it bounds the parts in memory
                if failed:
                    self._slots.release()
                    break
                try:
                    body = await reader.read(part_bytes)
                except BaseException:
                    self._slots.release()
                    raise
                if not body:
                    self._slots.release()
                    break
                number += 1
                if number > MAX_PARTS:
                    self._slots.release()
                    raise ValueError(f"{key}: more than {MAX_PARTS} parts of {part_bytes} bytes")
                size += len(body)
                start(number, body)
                del body
            if tasks:
                await asyncio.wait(set(tasks))
            if failed:
                raise failed[0]
            parts.sort(key=lambda part: part["PartNumber"])
            reply = await self._retrying(
                "CompleteMultipartUpload",
                lambda: self._writer.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                ),
            )
            return ObjectInfo(key, size, reply.get("ETag", ""))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._abort(name, upload_id)
            raise

    async def _abort(self, name: str, upload_id: str) -> None:
        """Best effort: what is left is found by delete_prefix (or the bucket's
        lifecycle rule for incomplete uploads)."""
        try:
            await self._retrying(
                "AbortMultipartUpload",
                lambda: self._writer.abort_multipart_upload(
                    Bucket=self.bucket, Key=name, UploadId=upload_id
                ),
            )
        except (StorageUnavailable, NotFound):
            log.warning("could not abort the multipart upload of %s; delete_prefix will", name)

    async def get_range(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """The bytes of ``key`` from ``start`` up to ``end`` (exclusive; fewer when
        the object is shorter), in chunks. A connection that drops mid-way is
        resumed from the byte reached, within the retry budget. Raises NotFound,
        StorageUnavailable."""
        name = self.prefix + key
        position = start
        failures = 0

        async def fetch() -> Any:
            try:
                return await self._read_client.get_object(
                    Bucket=self.bucket, Key=name, Range=f"bytes={position}-{end - 1}"
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                    return None  # start at or past the end of the object
                raise

        while position < end:
            reply = await self._retrying("GetObject", fetch, take_slot=False)
            if reply is None:
                return
            body = reply["Body"]
            try:
                while True:
                    try:
                        chunk = await body.read(READ_CHUNK_BYTES)
                    except RETRYABLE_ERRORS as exc:
                        failures += 1
                        if failures > self.settings.retries:
                            raise self._unavailable("GetObject", exc) from None
                        await asyncio.sleep(self._backoff(failures - 1))
                        break  # a new GET from position
                    if not chunk:
                        return
                    position += len(chunk)
                    yield chunk
            finally:
                body.close()

    async def compose(self, key: str, sources: list[str]) -> ObjectInfo:
        """Concatenate existing objects into ``key`` inside the bucket (UploadPartCopy:
        no bytes pass through Weft), e.g. a finished stream's segments into one
        object. Every source but the last must be at least 5 MiB (S3's part
        minimum); at most 10,000. Raises NotFound, StorageUnavailable."""
        if not 1 <= len(sources) <= MAX_PARTS:
            raise ValueError(f"compose needs 1 to {MAX_PARTS} sources")
        name = self.prefix + key
        upload = await self._retrying(
            "CreateMultipartUpload",
            lambda: self._writer.create_multipart_upload(Bucket=self.bucket, Key=name),
        )
        upload_id = upload["UploadId"]
        try:

            async def copy(number: int, source: str) -> CompletedPartTypeDef:
                reply = await self._retrying(
                    "UploadPartCopy",
                    lambda: self._writer.upload_part_copy(
                        Bucket=self.bucket,
                        Key=name,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource={"Bucket": self.bucket, "Key": self.prefix + source},
                    ),
                )
                return {"PartNumber": number, "ETag": reply["CopyPartResult"]["ETag"]}

            # The slots bound how many copies run at once; gather keeps part order.
            parts = await asyncio.gather(
                *(copy(number, source) for number, source in enumerate(sources, 1))
            )
            await self._retrying(
                "CompleteMultipartUpload",
                lambda: self._writer.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": list(parts)},
                ),
            )
        except BaseException:
            await self._abort(name, upload_id)
            raise
        info = await self.head(key)
        if info is None:
            raise StorageUnavailable(f"The object store lost {key} right after composing it.")
        return info

    async def check(self) -> None:
        """Raise StorageUnavailable unless the bucket answers and takes Weft's
        credentials (for start-up and /readyz; a HEAD of an object cannot tell a
        missing bucket from a missing key)."""
        try:
            await self._retrying("HeadBucket", lambda: self._writer.head_bucket(Bucket=self.bucket))
        except NotFound:
            raise StorageUnavailable(f"The object store has no bucket {self.bucket}.") from None

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size and ETag, or None when there is none. Raises
        StorageUnavailable."""
        try:
            reply = await self._retrying(
                "HeadObject",
                lambda: self._writer.head_object(Bucket=self.bucket, Key=self.prefix + key),
            )
        except NotFound:
            return None
        return ObjectInfo(key, reply["ContentLength"], reply["ETag"])

    async def list_prefix(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order. Raises
        StorageUnavailable."""
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
            if token:
                params["ContinuationToken"] = token
            page = await self._retrying(
                "ListObjectsV2", functools.partial(self._writer.list_objects_v2, **params)
            )
            for item in page.get("Contents", []):
                yield ObjectInfo(item["Key"][len(self.prefix) :], item["Size"], item["ETag"])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` and abort every unfinished multipart
        upload there (their parts cost storage and are invisible to listing).
        Returns how many objects went. Raises StorageUnavailable."""
        if not prefix:
            raise ValueError("delete_prefix needs a non-empty prefix")
        deleted = 0
        batch: list[str] = []

        async def flush() -> None:
            nonlocal deleted
            objects: Any = [{"Key": self.prefix + key} for key in batch]
            reply = await self._retrying(
                "DeleteObjects",
                lambda: self._writer.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                ),
            )
            if reply.get("Errors"):
                first = reply["Errors"][0]
                raise StorageUnavailable(
                    f"The object store did not delete {first.get('Key')}: {first.get('Code')}."
                )
            deleted += len(batch)
            batch.clear()

        async for info in self.list_prefix(prefix):
            batch.append(info.key)
            if len(batch) == 1000:  # DeleteObjects' limit
                await flush()
        if batch:
            await flush()
        await self.abort_uploads(prefix)
        return deleted

    async def abort_uploads(self, prefix: str) -> int:
        """Abort every unfinished multipart upload under ``prefix``: a crash, or
        an abort the bucket was down for, leaves them behind, invisible to
        listing, their parts costing storage. Returns how many there were.
        Raises StorageUnavailable."""
        count = 0
        async for name, upload_id in self._unfinished_uploads(self.prefix + prefix):
            await self._abort(name, upload_id)
            count += 1
        return count

    async def _unfinished_uploads(self, full_prefix: str) -> AsyncIterator[tuple[str, str]]:
        key_marker: str | None = None
        id_marker: str | None = None
        while True:
            params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix}
            if key_marker:
                params["KeyMarker"] = key_marker
            if id_marker:
                params["UploadIdMarker"] = id_marker
            page = await self._retrying(
                "ListMultipartUploads",
                functools.partial(self._writer.list_multipart_uploads, **params),
            )
            for upload in page.get("Uploads", []):
                yield upload["Key"], upload["UploadId"]
            if not page.get("IsTruncated"):
                return
            key_marker = page.get("NextKeyMarker")
            id_marker = page.get("NextUploadIdMarker")

    # --- retries -----------------------------------------------------------------------

    @property
    def _writer(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("S3ObjectStore is not open")
        return self._client

    @property
    def _read_client(self) -> S3Client:
        if self._reader is None:
            raise RuntimeError("S3ObjectStore is not open")
        return self._reader

    def _backoff(self, attempt: int) -> float:
        """Full jitter (uniform in [0, base × 2^attempt], capped): retries of many
        clients spread out instead of arriving together."""
        s = self.settings
        return random.uniform(0, min(s.backoff_max_seconds, s.backoff_base_seconds * 2**attempt))

    async def _retrying(
        self, operation: str, call: Callable[[], Awaitable[T]], *, take_slot: bool = True
    ) -> T:
        """``call()`` until it succeeds, at most 1 + retries times. With take_slot,
        each attempt holds one of the store's slots (not the backoff between)."""
        attempt = 0
        while True:
            try:
                if take_slot:
                    async with self._slots:
                        return await self._attempt(operation, call)
                return await self._attempt(operation, call)
            except _Retryable as exc:
                cause = exc.__cause__ or exc
                if attempt >= self.settings.retries:
                    raise self._unavailable(operation, cause) from None
                delay = self._backoff(attempt)
                attempt += 1
                log.debug("S3 %s failed (%s); retry %d in %.2f s", operation, cause, attempt, delay)
                await asyncio.sleep(delay)

    async def _attempt(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if code in MISSING_CODES or (status == 404 and code != "NoSuchBucket"):
                raise NotFound(f"No object {operation} could find.") from None
            if status >= 500 or status == 429 or code in RETRYABLE_CODES:
                raise _Retryable() from exc
            raise self._unavailable(operation, exc) from None
        except RETRYABLE_ERRORS as exc:
            raise _Retryable() from exc
        except BotoCoreError as exc:  # no credentials, bad endpoint and the like
            raise self._unavailable(operation, exc) from None

    def _unavailable(self, operation: str, cause: BaseException) -> StorageUnavailable:
        if isinstance(cause, ClientError):
            error = cause.response.get("Error", {})
            reason = f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
        else:
            reason = type(cause).__name__
        log.warning("S3 %s on bucket %s failed: %s", operation, self.bucket, reason)
        return StorageUnavailable(
            f"The object store (bucket {self.bucket}) cannot be used: {operation}: {reason}."
        )


def _map_large_buffers() -> None:
    """Have glibc serve every buffer of MMAP_THRESHOLD or more (each part) from
    mmap, so that it goes back to the system when freed. By default glibc raises
    its threshold (up to 32 MiB) the first time such a block is freed, and parts
    read by worker threads then come from per-thread heaps that fragment and
    keep their pages: uploads of many segments held ~50 MiB more than their parts.
    Process-wide; a no-op off glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


class _Body(io.BytesIO):
    """A part as botocore's Body, holding its bytes alone. Given bytes, botocore
    wraps them in a BytesIO that shares them, and aiohttp's BytesIOPayload calls
    getbuffer(), which copies a buffer still shared: every part in flight would
    be in memory twice. Build it from bytes nobody else keeps (the caller drops
    its reference), and pass ``rewound()`` to each attempt."""

    def rewound(self) -> _Body:
        self.seek(0)
        return self


class _PartReader:
    """Exactly ``n`` bytes at a time (fewer only at the end) from any Source, never
    holding more than one part plus one incoming piece."""

    def __init__(self, pull: Callable[[int], Awaitable[bytes]], close: Callable[[], None]) -> None:
        self._pull = pull
        self._close = close

    @classmethod
    def of(cls, source: Source) -> _PartReader:
        if isinstance(source, bytes | bytearray | memoryview):  # not an iterable of ints
            return cls(_Pieces([bytes(source)]).read, lambda: None)
        if isinstance(source, str | os.PathLike):
            file = open(Path(source), "rb")  # closed by __aexit__
            return cls(lambda n: asyncio.to_thread(file.read, n), file.close)
        if hasattr(source, "read"):
            readable: Any = source
            return cls(lambda n: asyncio.to_thread(_read_fully, readable, n), lambda: None)
        return cls(_Pieces(source).read, lambda: None)

    async def read(self, n: int) -> bytes:
        return await self._pull(n)

    async def __aenter__(self) -> _PartReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._close()


def _read_fully(file: IO[bytes], n: int) -> bytes:
    """``n`` bytes, fewer only at EOF (a pipe or socket file may return less)."""
    pieces = []
    wanted = n
    while wanted > 0:
        piece = file.read(wanted)
        if not piece:
            break
        pieces.append(piece)
        wanted -= len(piece)
    return b"".join(pieces)


class _Pieces:
    """Re-cuts the pieces of an (async) iterable into parts."""

    def __init__(self, source: AsyncIterable[bytes] | Iterable[bytes]) -> None:
        self._async: AsyncIterator[bytes] | None = None
        self._sync: Any = None
        if isinstance(source, AsyncIterable):
            self._async = aiter(source)
        else:
            self._sync = iter(source)
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._done = False

    async def _next(self) -> bytes | None:
        try:
            if self._async is not None:
                return await anext(self._async)
            return bytes(next(self._sync))
        except (StopAsyncIteration, StopIteration):
            return None

    async def read(self, n: int) -> bytes:
        while self._held_bytes < n and not self._done:
            piece = await self._next()
            if piece is None:
                self._done = True
            elif piece:
                self._held.append(piece)
                self._held_bytes += len(piece)
        rest = b""
        if self._held_bytes > n:  # only the last piece crosses the part's end
            last = self._held.pop()
            cut = len(last) - (self._held_bytes - n)
            self._held.append(last[:cut])
            rest = last[cut:]
        part = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held = [rest] if rest else []
        self._held_bytes = len(rest)
        return part
