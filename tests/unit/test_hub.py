"""What only the in-process hub does; the rest of its behaviour is Hub's
contract (tests/contract/test_hub_contract.py)."""

from __future__ import annotations

from app.storage.memory_hub import FEED_BACKLOG, MemoryHub
from app.streams.models import EventKind, HubEvent, StreamState


async def test_feed_that_falls_too_far_behind_is_ended_after_its_backlog() -> None:
    hub = MemoryHub()
    async with hub.feed() as feed:
        for n in range(FEED_BACKLOG + 5):
            hub.publish(HubEvent(EventKind.CREATED, f"s{n}", "k", 0, StreamState.LIVE))
        received = [event async for event in feed]
    assert len(received) == FEED_BACKLOG
    assert received[0].stream_id == "s0"
