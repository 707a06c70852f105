"""Abandonment, takeover of dead nodes' streams, and retention: what used to be
timers of one process, now rounds that any node may run, several at once.

Who acts is decided by the lease, never by which process happens to have a
timer: a node abandons only the idle streams it holds (renewing the lease just
before), the streams of a node that died are taken over, when they are due, by
whichever node acquires their expired lease first, and every row write names
the incarnation it is for and happens only while the row is live (repo.update,
repo.delete with the key), so a second node's round finds nothing left to do.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from app.errors import StreamNotFound, StreamNotLive, WeftError
from app.storage.base import Lease
from app.streams.models import StreamState, utcnow

if TYPE_CHECKING:
    from app.streams.service import StreamService

log = logging.getLogger("weft.streams")
TAKEOVER_BATCH = 100  # expired leases looked at per round
RETENTION_BATCH = 500  # finished streams deleted per retention round


class Sweeper:
    def __init__(self, service: StreamService) -> None:
        self.service = service
        settings = service.settings
        keep = settings.retention.complete_after
        self._retention_every = None if keep is None else min(keep / 2, 60.0)
        self._retention_due = 0.0
        # When each expired lease's stream is due for abandonment, by (id, key,
        # epoch): its row is read once, not every round.
        self._due: dict[tuple[str, str, int], datetime] = {}
        # An idle stream is abandoned at most this late.
        self.interval = min(settings.abandon_after / 4, self._retention_every or 1.0, 1.0)

    async def sweep(self) -> None:
        """One round; each part logs its own failures and the next round retries."""
        await self.take_over_expired()
        await self.abandon_idle()
        if self._retention_every is not None:
            now = asyncio.get_running_loop().time()
            if now >= self._retention_due:
                self._retention_due = now + self._retention_every
                await self.delete_expired()

    async def abandon_idle(self) -> None:
        """This node's idle streams past their deadline (abandon_after since the
        last producer left, or since the last activity of a stream taken over)."""
        for live in self.service.idle_past_deadline(utcnow()):
            try:
                held = await self.service.confirm_lease(live)
            except WeftError as exc:
                log.warning("abandon_failed stream_id=%s error=%s", live.info.id, exc.message)
                continue
            if held:
                await self.service.abandon(live)

    async def take_over_expired(self) -> None:
        """Live streams whose node stopped renewing their lease (it died) are
        taken over once abandon_after has passed since their row's last
        activity, and then abandoned as this node's idle streams. Until then
        the lease stays expired, so that the producer's resume through any node
        takes the stream over (were a sweeping node to hold it, a resume through
        any other node would get 409). A lease of a stream that is no longer
        live is forgotten."""
        service = self.service
        try:
            expired = await service.leases.expired(TAKEOVER_BATCH)
        except WeftError as exc:
            log.warning("takeover_failed error=%s", exc.message)
            return
        seen = {(lease.stream_id, lease.key, lease.epoch) for lease in expired}
        self._due = {slot: due for slot, due in self._due.items() if slot in seen}
        for lease in expired:
            mine = service._live.get(lease.stream_id)
            if mine is not None and mine.lease == lease:
                # This node's own renewals failed for a whole ttl: what it has in
                # memory may be stale, so it drops it and rebuilds like anyone.
                await service.lose(mine)
            due = self._due.get((lease.stream_id, lease.key, lease.epoch))
            if due is not None and due > utcnow():
                continue
            try:
                await self._take_over(lease)
            except WeftError as exc:  # the next round tries again
                log.warning("takeover_failed stream_id=%s error=%s", lease.stream_id, exc.message)

    async def _take_over(self, lease: Lease) -> None:
        service = self.service
        row = await service.repo.get(lease.stream_id)
        if row is None or row.key != lease.key or row.state is not StreamState.LIVE:
            # Finished or replaced: acquiring this key now would also displace the
            # lease of a newer incarnation.
            await service.leases.forget(lease.stream_id, lease.key)
            return
        due = row.updated_at + timedelta(seconds=service.settings.abandon_after)
        if due > utcnow():
            self._due[(lease.stream_id, lease.key, lease.epoch)] = due
            return
        try:
            await service.take_over(lease.stream_id, lease.key, resumed=False)
        except (StreamNotFound, StreamNotLive):
            pass  # it finished or went meanwhile; take_over forgot the lease

    async def delete_expired(self) -> None:
        """Delete finished streams older than retention.complete_after, as DELETE would."""
        service = self.service
        keep = service.settings.retention.complete_after
        assert keep is not None
        cutoff = utcnow() - timedelta(seconds=keep)
        for info in await service.repo.finished_before(cutoff, limit=RETENTION_BATCH):
            try:
                removed = await service._delete_row(info.id, info.key)
            except WeftError as exc:  # the next round tries again
                log.warning("retention_failed stream_id=%s error=%s", info.id, exc.message)
                return
            if removed is not None:  # None: another node deleted it first
                await service._discard(info)
                log.info("stream_expired stream_id=%s", info.id)
