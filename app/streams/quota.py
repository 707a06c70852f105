"""The storage quota, ``limits.total_bytes`` (tusd's limitedstore, NATS max bytes).

The stored total is the sum of every stream's size in the database: the
whole cluster's, not this node's. When a new stream or an append would take
it past the quota, the streams that finished earliest (complete or abandoned)
are deleted, as by ``DELETE`` (events, hooks, readers ended), until it fits;
when only live streams are left, the new stream or the append gets 507.

The database stays off the per-chunk path. A running estimate (the total read
at the last round plus what this node stored since) answers while bytes fit;
only a chunk or a create that does not fit reads the database, and while only
live streams are left, that answer ("full") is trusted by appends for
``INTERVAL`` seconds. A round every ``INTERVAL`` seconds (the upkeep loop) re-reads the
total, so other nodes' bytes and deletes are seen, and evicts what the
cluster's producers wrote past the quota meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from app.errors import InsufficientStorage, StreamNotFound, WeftError
from app.metrics import Metrics
from app.storage.base import MetadataRepo
from app.streams.models import StreamInfo

log = logging.getLogger("weft.streams")
INTERVAL = 1.0  # seconds between rounds; how long a "full" answer stands
EVICT_BATCH = 50  # finished streams read per query while evicting
MAX_BATCHES = 20  # queries of one round
# No cutoff: a stream another node finished by a clock ahead of ours counts too.
EVERY_FINISHED = datetime(9999, 1, 1, tzinfo=UTC)


class QuotaExceeded(InsufficientStorage):
    message = (
        "The storage quota (limits.total_bytes) is used up by live streams; nothing was "
        "stored. Complete or delete streams to make room."
    )


class Quota:
    def __init__(
        self,
        *,
        limit: int | None,
        repo: MetadataRepo,
        metrics: Metrics,
        flush: Callable[[], Awaitable[None]],
        delete: Callable[[StreamInfo], Awaitable[object]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """flush writes this node's live sizes to the database (so the total
        read next includes them); delete removes one finished incarnation as
        DELETE does, raising StreamNotFound when it is gone already."""
        self.limit = limit
        self._repo, self._metrics = repo, metrics
        self._flush, self._delete, self._clock = flush, delete, clock
        self._lock = asyncio.Lock()
        self._stored = 0  # bytes this node stored, ever
        self._estimate = 0  # the total at the last round plus what was stored since
        self._known = False  # no round yet: the estimate means nothing
        self._full = False  # the last round left only live streams and no room
        self._checked_at = -math.inf

    def consumed(self, size: int) -> None:
        self._stored += size
        self._estimate += size

    async def make_room(self, need: int, *, fresh: bool = False) -> None:
        """Raise QuotaExceeded (507) unless need more bytes fit under the quota,
        after evicting finished streams for them. fresh (a create, which writes
        the database anyway): never answer "full" from the last round."""
        limit = self.limit
        if limit is None or (self._known and self._estimate + need <= limit):
            return
        if fresh or not self._full or self._clock() - self._checked_at >= INTERVAL:
            await self.enforce(need)
        if self._estimate + need > limit:
            raise QuotaExceeded()

    async def round(self) -> None:
        """The upkeep loop's round: enforce, logging a failure (the next round retries)."""
        try:
            await self.enforce()
        except WeftError as exc:
            log.warning("quota_round_failed error=%s", exc.message)

    async def enforce(self, need: int = 0) -> None:
        """One round: read the total and, while it plus need is over the quota,
        delete the finished stream that finished earliest. Raises the
        database's 503/507 when the total cannot be read; a failed eviction is
        logged and ends the round."""
        limit = self.limit
        if limit is None:
            return
        async with self._lock:
            mark = self._stored
            await self._flush()
            total = await self._repo.total_size()
            for _ in range(MAX_BATCHES):  # bounded: the next round goes on
                if total + need <= limit:
                    break
                evicted, total = await self._evict_batch(total, need, limit)
                if not evicted:
                    break
                total = await self._repo.total_size()  # other nodes write and evict too
            # Stored since the mark: counted twice if the flush saw it, which errs on the safe side.
            self._estimate = total + (self._stored - mark)
            self._full = self._estimate + need > limit
            self._known, self._checked_at = True, self._clock()

    async def _evict_batch(self, total: int, need: int, limit: int) -> tuple[bool, int]:
        """Evict from the earliest finished streams until total + need fits;
        (whether any was evicted or gone already, the total after)."""
        progress = False
        for info in await self._repo.finished_before(EVERY_FINISHED, EVICT_BATCH):
            if total + need <= limit:
                break
            try:
                await self._delete(info)
            except StreamNotFound:
                # Deleted meanwhile (another node's round): the total read is
                # stale, and evicting on from it would delete one too many.
                return True, total
            except WeftError as exc:
                log.warning("eviction_failed stream_id=%s error=%s", info.id, exc.message)
                return False, total
            progress = True
            total -= info.size
            self._metrics.evictions.inc()
            log.info(
                "stream_evicted stream_id=%s size=%d total=%d total_bytes=%d",
                info.id,
                info.size,
                total,
                limit,
            )
        return progress, total
