"""Cost of producer leases (issue 11): SqlLeases on PostgreSQL (and SQLite),
against MemoryLeases and a bare ``SELECT 1`` on the same engine (the floor of
one statement) measured in the same run.

    acquire-new       a free stream id: the INSERT path of the upsert
    acquire-held      the holder again (renewal by acquire): the UPDATE path
    acquire-refused   another node while the lease is held: no row written
    renew-1000        one node renews its 1,000 leases in one statement
    expired-100       the sweeper's query, 100 of 1,000 expired rows

and the references on the same engine: select-1 (a bare round trip), write-1
(one row updated by primary key and committed), write-1000 (renew-1000's rows
updated by node id, nothing to match).

    .venv/bin/python -m bench.leases [--url URL] [--ops 500] [--runs 3] [--sqlite]

Prints the median per call in ms (median of the runs' medians). On PostgreSQL
it works in a schema of its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import text

from app.storage.base import Lease, LeaseStore
from app.storage.memory_leases import MemoryLeases
from app.storage.metadata import SqlMetadataRepo
from app.storage.sql_leases import SqlLeases

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
LONG = 3600.0

Case = Callable[[LeaseStore, int], Awaitable[list[float]]]


async def timed(calls: list[Callable[[], Awaitable[object]]]) -> list[float]:
    clock = time.perf_counter
    samples = []
    for call in calls:
        started = clock()
        await call()
        samples.append(clock() - started)
    return samples


async def acquire_new(store: LeaseStore, ops: int) -> list[float]:
    run = uuid.uuid4().hex[:8]
    return await timed(
        [lambda i=i: store.acquire(f"new-{run}-{i}", "k", "a", LONG) for i in range(ops)]
    )


async def acquire_held(store: LeaseStore, ops: int) -> list[float]:
    await store.acquire("held", "k", "a", LONG)
    return await timed([lambda: store.acquire("held", "k", "a", LONG)] * ops)


async def acquire_refused(store: LeaseStore, ops: int) -> list[float]:
    await store.acquire("refused", "k", "a", LONG)
    return await timed([lambda: store.acquire("refused", "k", "b", LONG)] * ops)


async def renew_1000(store: LeaseStore, ops: int) -> list[float]:
    run = uuid.uuid4().hex[:8]
    held = [await store.acquire(f"r-{run}-{i}", "k", "n", LONG) for i in range(1000)]
    leases = [lease for lease in held if lease is not None]

    async def renew() -> None:
        kept = await store.renew("n", leases, LONG)
        if len(kept) != 1000:
            raise RuntimeError(f"renew kept {len(kept)} of 1000")

    return await timed([renew] * max(ops // 20, 10))


async def expired_100(store: LeaseStore, ops: int) -> list[float]:
    run = uuid.uuid4().hex[:8]
    for i in range(1000):
        await store.acquire(f"x-{run}-{i}", "k", "dead", 0.0 if i % 10 == 0 else LONG)

    async def sweep() -> None:
        found: list[Lease] = await store.expired(100)
        if len(found) != 100:
            raise RuntimeError(f"expired found {len(found)} of 100")

    return await timed([sweep] * max(ops // 5, 10))


CASES: dict[str, Case] = {
    "acquire-new": acquire_new,
    "acquire-held": acquire_held,
    "acquire-refused": acquire_refused,
    "renew-1000": renew_1000,
    "expired-100": expired_100,
}


async def select_1(repo: SqlMetadataRepo, ops: int) -> list[float]:
    async def one() -> None:
        async with repo.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    return await timed([one] * ops)


async def write_1(repo: SqlMetadataRepo, ops: int) -> list[float]:
    """One row written and committed by primary key: the floor of an acquire."""

    async def one() -> None:
        async with repo.engine.begin() as conn:
            await conn.execute(text("UPDATE leases SET epoch = epoch WHERE stream_id = 'held'"))

    return await timed([one] * ops)


async def write_1000(repo: SqlMetadataRepo, ops: int) -> list[float]:
    """The 1,000 rows of renew-1000 written by node, nothing matched: the floor of a renew."""

    async def all_of_n() -> None:
        async with repo.engine.begin() as conn:
            found = await conn.execute(
                text("UPDATE leases SET expires_us = expires_us + 1 WHERE node_id = 'n'")
            )
            if found.rowcount != 1000:
                raise RuntimeError(f"wrote {found.rowcount} rows, not 1000")

    return await timed([all_of_n] * max(ops // 20, 10))


REFERENCES = {"select-1": select_1, "write-1": write_1, "write-1000": write_1000}


async def measure(url: str, namespace: str, ops: int) -> dict[str, dict[str, float]]:
    """{case: {backend: median ms}} for one run on fresh tables."""
    repo = SqlMetadataRepo(url, namespace=namespace)
    await repo.start()
    try:
        figures: dict[str, dict[str, float]] = {}
        for backend, store in (("memory", MemoryLeases()), ("sql", SqlLeases(repo))):
            for name, case in CASES.items():
                samples = await case(store, ops)
                figures.setdefault(name, {})[backend] = statistics.median(samples) * 1000
        for name, reference in REFERENCES.items():
            figures[name] = {"sql": statistics.median(await reference(repo, ops)) * 1000}
        return figures
    finally:
        if repo.engine.dialect.name == "postgresql":
            async with repo.engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE'))
        await repo.close()


def report(label: str, runs: list[dict[str, dict[str, float]]]) -> None:
    print(f"\n{label}: median per call, ms (median of {len(runs)} runs)")
    print(f"{'case':<18}{'sql':>10}{'memory':>10}")
    for name in [*CASES, *REFERENCES]:
        sql = statistics.median(run[name]["sql"] for run in runs)
        memory = [run[name]["memory"] for run in runs if "memory" in run[name]]
        shown = f"{statistics.median(memory):>10.4f}" if memory else f"{'-':>10}"
        print(f"{name:<18}{sql:>10.3f}{shown}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=PG_URL)
    parser.add_argument("--ops", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sqlite", action="store_true", help="also on a SQLite file")
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        runs.append(await measure(args.url, f"weft_bench_{uuid.uuid4().hex[:10]}", args.ops))
    report("PostgreSQL", runs)
    if args.sqlite:
        runs = []
        with tempfile.TemporaryDirectory() as tmp:
            for n in range(args.runs):
                url = f"sqlite+aiosqlite:///{Path(tmp) / f'bench-{n}.db'}"
                runs.append(await measure(url, "weft", args.ops))
        report("SQLite", runs)


if __name__ == "__main__":
    asyncio.run(main())
