"""Work the service does outside requests: rebuilding live streams at start,
and the periodic tasks (size checkpoints, fsync interval, retention)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from app.errors import CorruptBlock, StreamNotFound
from app.metrics import Metrics
from app.storage.base import MetadataRepo, SegmentStore
from app.streams.integrity import report
from app.streams.models import StreamInfo, utcnow

log = logging.getLogger("weft.streams")
HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class Recovered:
    info: StreamInfo  # size as the segments say
    hasher: Any  # SHA-256 of those bytes, ready for more


async def recover_live(
    store: SegmentStore, repo: MetadataRepo, metrics: Metrics | None = None
) -> list[Recovered]:
    """Every stream the database says is live, rebuilt from its segments: the
    files, not the database's checkpoint, say how many bytes are stored. Each
    block is verified on the way; the stream ends before the first that fails
    (or before bytes no checksum covers), and what follows is cut off."""
    recovered = []
    for info in await repo.live():
        try:
            size = await store.size(info.key)
        except StreamNotFound:
            await store.create(info.key)
            size = 0
        hasher = hashlib.sha256()
        offset = 0
        while offset < size:
            try:
                data = await store.read(info.key, offset, HASH_BLOCK)
            except CorruptBlock as exc:
                report(metrics, info.id, exc, "recovery")
                await store.trim(info.key, offset)
                log.warning(
                    "stream_trimmed stream_id=%s size=%d dropped=%d", info.id, offset, size - offset
                )
                break
            if not data:
                break
            hasher.update(data)
            offset += len(data)
        rebuilt = info.with_changes(size=offset, updated_at=utcnow())
        await repo.update(rebuilt)
        recovered.append(Recovered(rebuilt, hasher))
        log.info("stream_recovered stream_id=%s size=%d", info.id, offset)
    return recovered


async def every(seconds: float, work: Callable[[], Awaitable[None]]) -> None:
    """Run work every so many seconds until cancelled; a failed round is logged
    and the next one still runs."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await work()
        except Exception:
            log.exception("periodic_task_failed task=%s", getattr(work, "__name__", work))
