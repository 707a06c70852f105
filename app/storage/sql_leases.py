"""SqlLeases: producer leases as rows of the metadata database (a cluster's
LeaseStore). Every decision is one statement judged by the database's clock,
so two nodes racing for a lease, or a node whose clock is off, cannot both win."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    String,
    and_,
    bindparam,
    case,
    cast,
    delete,
    extract,
    false,
    func,
    not_,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.storage.base import Lease
from app.storage.metadata import LEASES, SqlMetadataRepo, translated

MICROS = 1_000_000
UNIX_EPOCH_JULIAN_DAY = 2440587.5

C = LEASES.c


class SqlLeases:
    """On the repository's engine (one pool, one schema); its start() creates
    the table (migration 0002) and its close() disposes the engine."""

    def __init__(self, repo: SqlMetadataRepo) -> None:
        self._engine = repo.engine
        self._write_lock = repo.write_lock  # SQLite's one writer
        self._postgresql = self._engine.dialect.name == "postgresql"
        # Built once: making them anew cost about 1 ms of CPU per call.
        self._acquire = self._acquire_statement()
        self._renew = self._renew_statement()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    @asynccontextmanager
    async def _statement(self, *, writes: bool) -> AsyncIterator[AsyncConnection]:
        """A connection for one statement, run on its own (autocommit): one
        round trip on PostgreSQL instead of BEGIN, statement, COMMIT."""
        async with self._write_lock if writes else nullcontext(), self._engine.connect() as conn:
            yield await conn.execution_options(isolation_level="AUTOCOMMIT")

    def _now(self) -> ColumnElement[int]:
        """The database's time in microseconds; one value within a statement
        (PostgreSQL: the transaction's start; SQLite: the statement's)."""
        if self._postgresql:
            return cast(extract("epoch", func.now()) * MICROS, BigInteger)
        days = func.julianday("now") - UNIX_EPOCH_JULIAN_DAY
        return cast(days * (86400.0 * MICROS), BigInteger)

    def _held(self, now: ColumnElement[int]) -> ColumnElement[bool]:
        return and_(C.released == false(), C.expires_us > now)

    def _acquire_statement(self) -> Any:
        now = self._now()
        insert = (postgresql.insert if self._postgresql else sqlite.insert)(LEASES)
        new = insert.excluded
        same_key = C.key == new.key
        held = self._held(now)
        return (
            insert.values(
                stream_id=bindparam("sid"),
                key=bindparam("key"),
                node_id=bindparam("node"),
                epoch=1,
                expires_us=now + bindparam("ttl_us", type_=BigInteger),
                released=False,
            )
            .on_conflict_do_update(
                index_elements=[C.stream_id],
                set_={
                    "key": new.key,
                    "node_id": new.node_id,
                    # Held (by this node, as the WHERE allows no other): a renewal.
                    "epoch": case(
                        (and_(same_key, held), C.epoch),
                        (same_key, C.epoch + 1),
                        else_=1,  # a new incarnation starts over
                    ),
                    "expires_us": new.expires_us,
                    "released": false(),
                },
                where=or_(not_(same_key), not_(held), C.node_id == new.node_id),
            )
            .returning(C.epoch)
        )

    @translated
    async def acquire(self, stream_id: str, key: str, node_id: str, ttl: float) -> Lease | None:
        values = {"sid": stream_id, "key": key, "node": node_id, "ttl_us": round(ttl * MICROS)}
        async with self._statement(writes=True) as conn:
            epoch = (await conn.execute(self._acquire, values)).scalar_one_or_none()
        return None if epoch is None else Lease(stream_id, key, node_id, epoch)

    def _renew_statement(self) -> Any:
        now = self._now()
        wanted = self._wanted()
        return (
            update(LEASES)
            .where(
                # UPDATE ... FROM: joined with the wanted rows on the primary key.
                C.stream_id == wanted.c.sid,
                C.key == wanted.c.skey,
                C.epoch == wanted.c.sepoch,
                C.node_id == bindparam("node"),
                self._held(now),
            )
            .values(expires_us=now + bindparam("ttl_us", type_=BigInteger))
            .returning(C.stream_id)
        )

    def _wanted(self) -> Any:
        """(sid, skey, sepoch) of each lease as the rows of a FROM item, with a
        fixed number of parameters however many leases (the drivers' limits on
        parameters are in the tens of thousands)."""
        if self._postgresql:
            texts, numbers = postgresql.ARRAY(String), postgresql.ARRAY(BigInteger)
            rows = (
                func.unnest(
                    bindparam("ids", type_=texts),
                    bindparam("keys", type_=texts),
                    bindparam("epochs", type_=numbers),
                )
                .table_valued("sid", "skey", "sepoch")
                .render_derived()
            )
            # In the id column's collation, or its index cannot serve the join.
            sid = rows.c.sid.collate("C").label("sid")
            return select(sid, rows.c.skey, rows.c.sepoch).subquery("wanted")
        each = func.json_each(bindparam("leases", type_=String)).table_valued("value")
        columns = [
            func.json_extract(each.c.value, f"$[{i}]").label(name)
            for i, name in enumerate(("sid", "skey", "sepoch"))
        ]
        return select(*columns).subquery("wanted")

    @translated
    async def renew(self, node_id: str, leases: list[Lease], ttl: float) -> set[str]:
        mine = [lease for lease in leases if lease.node_id == node_id]
        if not mine:
            return set()
        values: dict[str, Any] = {"node": node_id, "ttl_us": round(ttl * MICROS)}
        if self._postgresql:
            values["ids"] = [lease.stream_id for lease in mine]
            values["keys"] = [lease.key for lease in mine]
            values["epochs"] = [lease.epoch for lease in mine]
        else:
            values["leases"] = json.dumps([[x.stream_id, x.key, x.epoch] for x in mine])
        async with self._write_lock, self._engine.begin() as conn:
            if self._postgresql:
                # From its 6th run a prepared statement may get a generic plan,
                # which knows neither the array's length nor, before the first
                # ANALYZE, the table: it scanned the array per row (0.5-1 s for
                # 1,000 leases instead of 30 ms) until autovacuum came by.
                await conn.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
            return set((await conn.execute(self._renew, values)).scalars())

    @translated
    async def release(self, lease: Lease) -> None:
        statement = (
            update(LEASES)
            .where(
                C.stream_id == lease.stream_id,
                C.key == lease.key,
                C.node_id == lease.node_id,
                C.epoch == lease.epoch,
            )
            .values(released=true())
        )
        async with self._statement(writes=True) as conn:
            await conn.execute(statement)

    @translated
    async def holder(self, stream_id: str) -> Lease | None:
        statement = select(C.stream_id, C.key, C.node_id, C.epoch).where(
            C.stream_id == stream_id, self._held(self._now())
        )
        async with self._statement(writes=False) as conn:
            row = (await conn.execute(statement)).one_or_none()
        return None if row is None else Lease(*row)

    @translated
    async def expired(self, limit: int) -> list[Lease]:
        statement = (
            select(C.stream_id, C.key, C.node_id, C.epoch)
            .where(C.released == false(), C.expires_us <= self._now())
            .order_by(C.expires_us, C.stream_id)
            .limit(limit)
        )
        async with self._statement(writes=False) as conn:
            return [Lease(*row) for row in await conn.execute(statement)]

    @translated
    async def forget(self, stream_id: str, key: str) -> None:
        statement = delete(LEASES).where(C.stream_id == stream_id, C.key == key)
        async with self._statement(writes=True) as conn:
            await conn.execute(statement)
