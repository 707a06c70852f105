"""Quota (app/streams/quota.py) over the in-memory repository: what it reads, when."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.errors import StreamNotFound
from app.metrics import Metrics
from app.streams.models import StreamInfo, StreamState
from app.streams.quota import INTERVAL, Quota, QuotaExceeded
from tests.contract.test_metadata_contract import T0, info
from tests.unit.fakes import MemoryMetadataRepo


class CountingRepo(MemoryMetadataRepo):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def total_size(self) -> int:
        self.reads += 1
        return await super().total_size()


class Harness:
    def __init__(self, limit: int) -> None:
        self.repo = CountingRepo()
        self.now = 0.0
        self.deleted: list[str] = []
        self.gone_already: set[str] = set()
        self.metrics = Metrics()
        self.quota = Quota(
            limit=limit,
            repo=self.repo,
            metrics=self.metrics,
            flush=self._flush,
            delete=self._delete,
            clock=lambda: self.now,
        )

    async def _flush(self) -> None:
        return None

    async def _delete(self, row: StreamInfo) -> None:
        await self.repo.delete(row.id, row.key)
        if row.id in self.gone_already:
            raise StreamNotFound(row.id)
        self.deleted.append(row.id)

    async def add(self, stream_id: str, size: int, *, finished_after: float | None) -> None:
        row = info(stream_id, key=f"k-{stream_id}", size=size)
        if finished_after is not None:
            done = T0 + timedelta(seconds=finished_after)
            row = row.with_changes(state=StreamState.COMPLETE, finished_at=done)
        await self.repo.insert(row, replace=False)


async def test_bytes_that_fit_are_checked_in_memory() -> None:
    h = Harness(limit=100)
    await h.quota.make_room(1, fresh=True)
    assert h.repo.reads == 1
    for _ in range(50):
        await h.quota.make_room(2)
        h.quota.consumed(2)
    assert h.repo.reads == 1


async def test_the_earliest_finished_go_first_until_it_fits() -> None:
    h = Harness(limit=100)
    await h.add("late", 40, finished_after=5)
    await h.add("early", 40, finished_after=1)
    await h.add("live", 20, finished_after=None)
    await h.quota.make_room(30)
    assert h.deleted == ["early"]
    await h.quota.make_room(70)
    assert h.deleted == ["early", "late"]
    assert h.metrics.evictions._value.get() == 2


async def test_only_live_streams_left_is_507_and_the_answer_stands_a_second() -> None:
    h = Harness(limit=100)
    await h.add("live", 100, finished_after=None)
    with pytest.raises(QuotaExceeded):
        await h.quota.make_room(1)
    reads = h.repo.reads
    with pytest.raises(QuotaExceeded):
        await h.quota.make_room(1)
    assert h.repo.reads == reads  # an append trusts the last answer ...
    with pytest.raises(QuotaExceeded):
        await h.quota.make_room(1, fresh=True)
    assert h.repo.reads == reads + 1  # ... a create does not
    await h.repo.delete("live")
    with pytest.raises(QuotaExceeded):
        await h.quota.make_room(1)
    h.now += INTERVAL
    await h.quota.make_room(1)  # read again: room


async def test_a_stream_another_node_evicted_first_is_not_counted_twice() -> None:
    h = Harness(limit=100)
    await h.add("a", 60, finished_after=1)
    await h.add("b", 60, finished_after=2)
    h.gone_already.add("a")
    await h.quota.make_room(0)
    assert h.deleted == [] and await h.repo.total_size() == 60
    assert h.metrics.evictions._value.get() == 0
