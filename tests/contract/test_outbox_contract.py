"""HookOutbox's contract (app/storage/base.py) on SQLite and PostgreSQL: the
repository writes outbox rows in the transaction of the state change they
report, claims are exclusive until they expire, and an entry is never claimed
while an older one of its hook and stream waits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from app.errors import StreamExists
from app.storage.base import OutboxEntry
from app.storage.metadata import SqlMetadataRepo
from app.storage.sql_outbox import SqlHookOutbox
from app.streams.models import StreamState
from tests.contract.test_metadata_contract import info
from tests.pg import fresh_database

ROUTES = {
    "post-create": ("h1", "h2"),
    "post-complete": ("h1",),
    "post-abandon": ("h1",),
    "post-delete": ("h1",),
}
Make = Callable[[], tuple[SqlMetadataRepo, SqlHookOutbox]]


@pytest.fixture(params=["sqlite", "postgresql"])
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Make]:
    """Nodes on one fresh database: each a repository and its outbox."""
    url, namespace = fresh_database(request.param, tmp_path)
    made: list[SqlMetadataRepo] = []

    def node() -> tuple[SqlMetadataRepo, SqlHookOutbox]:
        made.append(SqlMetadataRepo(url, namespace=namespace, hook_routes=ROUTES))
        return made[-1], SqlHookOutbox(made[-1])

    try:
        yield node
    finally:
        for repo in made:
            await repo.close()


@pytest.fixture
async def node(make: Make) -> tuple[SqlMetadataRepo, SqlHookOutbox]:
    repo, outbox = make()
    await repo.start()
    return repo, outbox


def kinds(entries: list[OutboxEntry]) -> list[tuple[str, str, str]]:
    return [(e.hook, e.event, e.stream_id) for e in entries]


async def drain(outbox: SqlHookOutbox, node_id: str = "a") -> list[tuple[str, str, str]]:
    """Claim and deliver until nothing is left; what went out, in order."""
    sent: list[tuple[str, str, str]] = []
    while entries := await outbox.claim(node_id, hold=30, limit=10):
        sent += kinds(entries)
        for entry in entries:
            await outbox.delivered(entry, node_id)
    return sent


async def test_state_changes_write_entries_delivered_in_order_per_hook_and_stream(
    node: tuple[SqlMetadataRepo, SqlHookOutbox],
) -> None:
    repo, outbox = node
    woken: list[bool] = []
    outbox.on_written(lambda: woken.append(True))
    live = info("s1", metadata={"b": 1})
    await repo.insert(live, replace=False)
    done = live.with_changes(state=StreamState.COMPLETE, size=3, finished_at=live.created_at)
    assert await repo.update(done)
    await repo.delete("s1")
    assert len(woken) == 3 and await outbox.pending() == 4

    heads = await outbox.claim("a", hold=30, limit=10)
    # Only the oldest of each (hook, stream): h1's complete waits for its create.
    assert kinds(heads) == [("h1", "post-create", "s1"), ("h2", "post-create", "s1")]
    assert json.loads(heads[0].payload) == live.to_json()
    assert heads[0].attempts == 0 and heads[0].delivery_id != heads[1].delivery_id
    assert await outbox.claim("a", hold=30, limit=10) == []
    for entry in heads:
        await outbox.delivered(entry, "a")
    assert await drain(outbox) == [("h1", "post-complete", "s1"), ("h1", "post-delete", "s1")]
    assert await outbox.pending() == 0


async def test_changes_that_do_not_happen_write_nothing(
    node: tuple[SqlMetadataRepo, SqlHookOutbox],
) -> None:
    repo, outbox = node
    await repo.insert(info("s1"), replace=False)
    with pytest.raises(StreamExists):
        await repo.insert(info("s1", key="k2"), replace=False)
    assert not await repo.update(info("missing", state=StreamState.ABANDONED))
    assert await repo.delete("missing") is None
    assert await repo.update(info("s1", size=5))  # still live: a checkpoint, no event
    assert await drain(outbox) == [("h1", "post-create", "s1"), ("h2", "post-create", "s1")]
    # A replacement reports the old incarnation's delete, then the new create.
    await repo.insert(info("s1", key="k3"), replace=True)
    assert await drain(outbox) == [
        ("h1", "post-delete", "s1"),
        ("h2", "post-create", "s1"),
        ("h1", "post-create", "s1"),
    ]


async def test_a_held_entry_goes_to_another_node_only_once_its_claim_expired(
    make: Make,
) -> None:
    (repo, mine), (other_repo, theirs) = make(), make()
    await repo.start()
    await other_repo.start()
    await repo.insert(info("s1"), replace=False)
    held = await mine.claim("a", hold=0.5, limit=1)
    assert kinds(held) == [("h1", "post-create", "s1")]
    assert kinds(await theirs.claim("b", hold=30, limit=10)) == [("h2", "post-create", "s1")]
    assert await theirs.claim("b", hold=30, limit=10) == []
    await asyncio.sleep(0.6)  # the database's clock moves past a's claim
    taken = await theirs.claim("b", hold=30, limit=10)
    assert [e.delivery_id for e in taken] == [held[0].delivery_id]
    await mine.retry(held[0], "a", delay=0)  # a lost it: its word no longer counts
    assert await mine.claim("a", hold=30, limit=10) == []
    await theirs.delivered(taken[0], "b")
    assert await theirs.pending() == 1


async def test_a_node_releasing_its_claims_makes_them_due_at_once(make: Make) -> None:
    (repo, mine), (other_repo, theirs) = make(), make()
    await repo.start()
    await other_repo.start()
    await repo.insert(info("s1"), replace=False)
    held = await mine.claim("a", hold=30, limit=10)
    assert len(held) == 2 and await theirs.claim("b", hold=30, limit=10) == []
    await theirs.release("b")  # another node's claims stay
    assert await theirs.claim("b", hold=30, limit=10) == []
    await mine.release("a")
    assert [e.delivery_id for e in await theirs.claim("b", hold=30, limit=10)] == [
        e.delivery_id for e in held
    ]


async def test_a_failed_entry_waits_its_delay_and_holds_back_its_stream(
    node: tuple[SqlMetadataRepo, SqlHookOutbox],
) -> None:
    repo, outbox = node
    await repo.insert(info("s1"), replace=False)
    await repo.update(info("s1", state=StreamState.ABANDONED))
    await repo.insert(info("s2"), replace=False)
    first = await outbox.claim("a", hold=30, limit=10)
    assert kinds(first) == [
        ("h1", "post-create", "s1"),
        ("h2", "post-create", "s1"),
        ("h1", "post-create", "s2"),
        ("h2", "post-create", "s2"),
    ]
    for entry in first[1:]:
        await outbox.delivered(entry, "a")
    await outbox.retry(first[0], "a", delay=0.5)
    # s1's abandon waits behind its failed create; nothing else is due.
    assert await outbox.claim("a", hold=30, limit=10) == []
    await asyncio.sleep(0.6)
    again = await outbox.claim("a", hold=30, limit=10)
    assert kinds(again) == [("h1", "post-create", "s1")]
    assert again[0].attempts == 1 and again[0].delivery_id == first[0].delivery_id
    await outbox.delivered(again[0], "a")
    assert await drain(outbox) == [("h1", "post-abandon", "s1")]


async def test_nodes_claiming_together_never_hold_the_same_entry(make: Make) -> None:
    nodes = [make() for _ in range(4)]
    for repo, _ in nodes:
        await repo.start()
    for n in range(40):
        await nodes[0][0].insert(info(f"s{n:02d}"), replace=False)

    async def claimer(name: str, outbox: SqlHookOutbox) -> list[str]:
        got: list[str] = []
        while entries := await outbox.claim(name, hold=30, limit=3):
            got += [e.delivery_id for e in entries]
            await asyncio.sleep(0)
        return got

    claims = await asyncio.gather(*(claimer(f"n{i}", ob) for i, (_, ob) in enumerate(nodes)))
    every = [delivery for claimed in claims for delivery in claimed]
    assert len(every) == len(set(every)) == 80
