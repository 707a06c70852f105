"""The LeaseStore contract (app/storage/base.py) on every implementation: in
process, and in the database (SQLite, PostgreSQL). Expiry is real time (short
ttls and sleeps), since the store's own clock is the point."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.storage.base import Lease, LeaseStore
from app.storage.memory_leases import MemoryLeases
from app.storage.metadata import SqlMetadataRepo
from app.storage.sql_leases import SqlLeases
from tests.pg import PG_URL, new_namespace, require_pg

TTL = 0.5  # long enough for a few statements on a loaded machine
PAST_TTL = 0.7  # a sleep after which a TTL lease has expired
LONG = 60.0


class Backend:
    """Makes the stores of nodes on one backend: the same object in process; in
    a database, a store on an engine (a pool of connections) of its own."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self._url = f"sqlite+aiosqlite:///{tmp_path / 'weft.db'}"
        self._namespace = "weft"
        if kind == "postgresql":
            require_pg()
            self._url, self._namespace = PG_URL, new_namespace()
        self._memory = MemoryLeases()
        self._repos: list[SqlMetadataRepo] = []

    async def node(self) -> LeaseStore:
        store: LeaseStore
        if self.kind == "memory":
            store = self._memory
        else:
            repo = SqlMetadataRepo(self._url, namespace=self._namespace)
            self._repos.append(repo)
            await repo.start()
            store = SqlLeases(repo)
        await store.start()
        return store

    async def close(self) -> None:
        for repo in self._repos:
            await repo.close()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    made = Backend(request.param, tmp_path)
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def leases(backend: Backend) -> LeaseStore:
    return await backend.node()


async def test_a_free_lease_is_granted_at_epoch_1(leases: LeaseStore) -> None:
    lease = await leases.acquire("s", "k1", "a", LONG)
    assert lease == Lease("s", "k1", "a", 1)
    assert await leases.holder("s") == lease
    assert await leases.holder("other") is None


async def test_another_node_is_refused_while_the_lease_is_unexpired(backend: Backend) -> None:
    a, b = await backend.node(), await backend.node()
    held = await a.acquire("s", "k1", "a", LONG)
    assert await b.acquire("s", "k1", "b", LONG) is None
    assert await b.holder("s") == held


async def test_the_holder_acquiring_again_keeps_its_epoch(leases: LeaseStore) -> None:
    first = await leases.acquire("s", "k1", "a", TTL)
    again = await leases.acquire("s", "k1", "a", LONG)  # also extends it
    assert first == again == Lease("s", "k1", "a", 1)
    await asyncio.sleep(PAST_TTL)
    assert await leases.holder("s") == first


async def test_an_expired_lease_is_taken_over_with_the_next_epoch(backend: Backend) -> None:
    a, b = await backend.node(), await backend.node()
    old = await a.acquire("s", "k1", "a", TTL)
    assert old is not None
    await asyncio.sleep(PAST_TTL)
    assert await a.holder("s") is None
    taken = await b.acquire("s", "k1", "b", LONG)
    assert taken == Lease("s", "k1", "b", 2)
    # The old holder has lost it for good: renewing does not bring it back,
    # nor does acquiring while the new holder's lease runs.
    assert await a.renew("a", [old], LONG) == set()
    assert await a.acquire("s", "k1", "a", LONG) is None
    assert await a.holder("s") == taken


async def test_the_holder_acquiring_after_its_own_expiry_gets_the_next_epoch(
    leases: LeaseStore,
) -> None:
    await leases.acquire("s", "k1", "a", TTL)
    await asyncio.sleep(PAST_TTL)
    assert await leases.acquire("s", "k1", "a", LONG) == Lease("s", "k1", "a", 2)


async def test_renew_extends_and_answers_only_the_leases_still_held(backend: Backend) -> None:
    a, b = await backend.node(), await backend.node()
    kept = await a.acquire("kept", "k1", "a", TTL)
    lost = await a.acquire("lost", "k1", "a", TTL)
    released = await a.acquire("released", "k1", "a", LONG)
    assert kept is not None and lost is not None and released is not None
    await asyncio.sleep(TTL / 2)
    assert await a.renew("a", [kept], LONG) == {"kept"}
    await asyncio.sleep(PAST_TTL - TTL / 2)
    assert await b.acquire("lost", "k1", "b", LONG) is not None
    await a.release(released)
    assert await a.renew("a", [kept, lost, released], LONG) == {"kept"}
    assert await a.holder("kept") == kept  # renewed past its first ttl


async def test_renew_ignores_leases_of_another_node(backend: Backend) -> None:
    a, b = await backend.node(), await backend.node()
    theirs = await b.acquire("s", "k1", "b", LONG)
    assert theirs is not None
    assert await a.renew("a", [theirs], LONG) == set()
    assert await a.renew("a", [], LONG) == set()


async def test_renew_of_many_leases_answers_each(leases: LeaseStore) -> None:
    held = [await leases.acquire(f"s{i}", f"k{i}", "a", LONG) for i in range(300)]
    assert all(held)
    stale = Lease("s0", "k0", "a", 7)  # an epoch it does not hold
    answer = await leases.renew("a", [lease for lease in held if lease] + [stale], LONG)
    assert answer == {f"s{i}" for i in range(300)}


async def test_release_grants_the_next_acquire_at_once_with_the_next_epoch(
    backend: Backend,
) -> None:
    a, b = await backend.node(), await backend.node()
    lease = await a.acquire("s", "k1", "a", LONG)
    assert lease is not None
    await a.release(lease)
    assert await a.holder("s") is None
    assert await b.acquire("s", "k1", "b", LONG) == Lease("s", "k1", "b", 2)
    # A late release of the old epoch leaves the new holder alone.
    await a.release(lease)
    assert await b.holder("s") == Lease("s", "k1", "b", 2)


async def test_expired_lists_only_expired_unreleased_leases_oldest_first(
    leases: LeaseStore,
) -> None:
    await leases.acquire("first", "k1", "a", TTL)
    await asyncio.sleep(0.05)
    await leases.acquire("second", "k1", "b", TTL)
    await asyncio.sleep(0.05)
    await leases.acquire("third", "k1", "a", TTL)
    given_up = await leases.acquire("released", "k1", "a", TTL)
    assert given_up is not None
    await leases.release(given_up)
    await leases.acquire("alive", "k1", "a", LONG)
    assert await leases.expired(10) == []
    await asyncio.sleep(PAST_TTL)
    assert [lease.stream_id for lease in await leases.expired(10)] == ["first", "second", "third"]
    assert await leases.expired(2) == [Lease("first", "k1", "a", 1), Lease("second", "k1", "b", 1)]
    # Taken over, it is no longer expired.
    await leases.acquire("first", "k1", "c", LONG)
    assert [lease.stream_id for lease in await leases.expired(10)] == ["second", "third"]


async def test_forget_drops_the_lease_of_that_incarnation_only(leases: LeaseStore) -> None:
    await leases.acquire("s", "k1", "a", TTL)
    await leases.forget("s", "k-other")
    assert await leases.holder("s") is not None
    await leases.forget("s", "k1")
    assert await leases.holder("s") is None
    await asyncio.sleep(PAST_TTL)
    assert await leases.expired(10) == []
    assert await leases.acquire("s", "k1", "b", LONG) == Lease("s", "k1", "b", 1)
    await leases.forget("missing", "k1")  # not an error


async def test_a_new_incarnation_replaces_the_lease_of_the_old_one(backend: Backend) -> None:
    a, b = await backend.node(), await backend.node()
    old = await a.acquire("s", "k1", "a", LONG)
    assert old is not None
    await b.acquire("s", "k1", "b", LONG)  # refused: the same incarnation, held
    new = await b.acquire("s", "k2", "b", LONG)
    assert new == Lease("s", "k2", "b", 1)
    assert await a.holder("s") == new
    assert await a.renew("a", [old], LONG) == set()
    await a.release(old)  # too late: leaves the new one alone
    assert await a.holder("s") == new


async def test_concurrent_acquires_from_many_nodes_grant_exactly_one(backend: Backend) -> None:
    if backend.kind != "postgresql":
        pytest.skip("concurrent writers from separate connections: PostgreSQL's case")
    nodes = [await backend.node() for _ in range(20)]
    for round_ in range(3):
        stream_id = f"race-{round_}"
        granted = await asyncio.gather(
            *(node.acquire(stream_id, "k1", f"n{i}", LONG) for i, node in enumerate(nodes))
        )
        winners = [lease for lease in granted if lease is not None]
        assert len(winners) == 1, winners
        assert winners[0].epoch == 1
        assert await nodes[0].holder(stream_id) == winners[0]
