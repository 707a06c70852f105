"""Work the service does outside requests: rebuilding a live stream from its
segments (at start, at a takeover), and the loop of its periodic tasks."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from app.errors import CorruptBlock, StorageUnavailable, StreamNotFound
from app.metrics import Metrics
from app.storage.base import MetadataRepo, SegmentStore
from app.streams.integrity import report
from app.streams.models import StreamInfo, StreamState, utcnow

log = logging.getLogger("weft.streams")
HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class Recovered:
    info: StreamInfo  # size as the segments say
    hasher: Any  # SHA-256 of those bytes, ready for more


async def recover_stream(
    store: SegmentStore,
    repo: MetadataRepo,
    info: StreamInfo,
    metrics: Metrics | None = None,
    *,
    touch: bool = True,
    budget: float | None = None,
) -> Recovered:
    """A live stream rebuilt from its segments (at start, or when this node takes
    it over from another): the files, not the database's checkpoint, say how
    many bytes are stored. Each block is verified on the way; the stream ends
    before the first that fails (or before bytes no checksum covers), and what
    follows is cut off. touch sets the row's updated_at to now; without it the
    row keeps the time of its last activity (a takeover's abandonment counts
    from there). Raises StorageUnavailable, having changed nothing, when the
    bytes cannot be read (within budget seconds, if given)."""
    try:
        size = await store.size(info.key)
    except StreamNotFound:
        await store.create(info.key)
        size = 0
    hasher = hashlib.sha256()
    try:
        offset, bad = await asyncio.wait_for(_digest(store, info.key, size, hasher), budget)
    except TimeoutError:
        raise StorageUnavailable(
            f"The stored bytes of stream {info.id} could not be read within {budget:g} s."
        ) from None
    if bad is not None:
        report(metrics, info.id, bad, "recovery")
        await store.trim(info.key, offset)
        log.warning(
            "stream_trimmed stream_id=%s size=%d dropped=%d", info.id, offset, size - offset
        )
    rebuilt = info.with_changes(size=offset, updated_at=utcnow() if touch else info.updated_at)
    await repo.update(rebuilt)
    log.info("stream_recovered stream_id=%s size=%d", info.id, offset)
    return Recovered(rebuilt, hasher)


async def _digest(
    store: SegmentStore, key: str, size: int, hasher: Any
) -> tuple[int, CorruptBlock | None]:
    """Hash the stored bytes up to the first bad block; (bytes hashed, that block's error)."""
    offset = 0
    while offset < size:
        try:
            data = await store.read(key, offset, HASH_BLOCK)
        except CorruptBlock as exc:
            return offset, exc
        if not data:
            break
        # hashlib lets go of the GIL on large buffers: a long rehash (a takeover
        # of a big stream) then leaves the event loop free for other requests.
        await asyncio.to_thread(hasher.update, data)
        offset += len(data)
    return offset, None


async def finish_interrupted(store: SegmentStore, repo: MetadataRepo, live: set[str]) -> None:
    """Tell the store of every stream the database says is finished but the
    store was never told of: a crash between the row's write and store.finish
    (with S3, the last partial segment would otherwise never be uploaded)."""
    keys = [key for key in await store.unfinished() if key not in live]
    if not keys:
        return
    for info in await repo.by_keys(keys):
        if info.state is StreamState.LIVE:
            continue
        try:
            size = await store.size(info.key)
        except StreamNotFound:
            continue
        if size != info.size:  # not what the row's digest covers: leave it alone
            log.warning(
                "stream_finish_skipped stream_id=%s size=%d stored=%d", info.id, info.size, size
            )
            continue
        await store.finish(info.key)
        log.info("stream_finish_resumed stream_id=%s size=%d", info.id, info.size)


async def every(seconds: float, work: Callable[[], Awaitable[None]]) -> None:
    """Run work every so many seconds until cancelled; a failed round is logged
    and the next one still runs."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await work()
        except Exception:
            log.exception("periodic_task_failed task=%s", getattr(work, "__name__", work))
