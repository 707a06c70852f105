"""Producer leases in one process: the single-node default, and the reference
implementation of the LeaseStore contract."""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.storage.base import Lease


@dataclass
class _Entry:
    lease: Lease
    expires: float  # time.monotonic(); 0 once released
    released: bool = False


class MemoryLeases:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._now = time.monotonic

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def acquire(self, stream_id: str, key: str, node_id: str, ttl: float) -> Lease | None:
        now = self._now()
        entry = self._entries.get(stream_id)
        if entry is not None and entry.lease.key == key:
            held = not entry.released and entry.expires > now
            if held and entry.lease.node_id != node_id:
                return None
            if held:
                entry.expires = now + ttl
                return entry.lease
            epoch = entry.lease.epoch + 1
        else:
            epoch = 1
        lease = Lease(stream_id, key, node_id, epoch)
        self._entries[stream_id] = _Entry(lease, now + ttl)
        return lease

    async def renew(self, node_id: str, leases: list[Lease], ttl: float) -> set[str]:
        now = self._now()
        kept = set()
        for lease in leases:
            entry = self._entries.get(lease.stream_id)
            if entry is None or entry.lease != lease or entry.released or entry.expires <= now:
                continue
            if lease.node_id != node_id:
                continue
            entry.expires = now + ttl
            kept.add(lease.stream_id)
        return kept

    async def release(self, lease: Lease) -> None:
        entry = self._entries.get(lease.stream_id)
        if entry is not None and entry.lease == lease:
            entry.released = True

    async def holder(self, stream_id: str) -> Lease | None:
        entry = self._entries.get(stream_id)
        if entry is None or entry.released or entry.expires <= self._now():
            return None
        return entry.lease

    async def expired(self, limit: int) -> list[Lease]:
        now = self._now()
        dead = [e for e in self._entries.values() if not e.released and e.expires <= now]
        dead.sort(key=lambda e: e.expires)
        return [e.lease for e in dead[:limit]]

    async def forget(self, stream_id: str, key: str) -> None:
        entry = self._entries.get(stream_id)
        if entry is not None and entry.lease.key == key:
            del self._entries[stream_id]
