"""SqlHookOutbox: the webhook outbox (HookOutbox) as rows of the metadata
database. A claim is one conditional UPDATE judged by the database's clock, so
two nodes claiming together never both hold an entry; on PostgreSQL the
candidates are locked with SKIP LOCKED so that claimers do not queue on each
other, and SQLite has one writer anyway."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext

from sqlalchemy import BigInteger, ColumnElement, cast, delete, exists, extract, func, or_, select
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.storage.base import OutboxEntry
from app.storage.metadata import HOOK_OUTBOX, SqlMetadataRepo, translated

MICROS = 1_000_000
UNIX_EPOCH_JULIAN_DAY = 2440587.5
C = HOOK_OUTBOX.c
COLUMNS = (C.id, C.delivery_id, C.hook, C.event, C.stream_id, C.payload, C.created_us, C.attempts)


class SqlHookOutbox:
    """On the repository's engine (its start() creates the table, migration 0004)."""

    def __init__(self, repo: SqlMetadataRepo) -> None:
        self._repo = repo
        self._engine = repo.engine
        self._write_lock = repo.write_lock
        self._postgresql = self._engine.dialect.name == "postgresql"

    @asynccontextmanager
    async def _statement(self, *, writes: bool) -> AsyncIterator[AsyncConnection]:
        async with self._write_lock if writes else nullcontext(), self._engine.connect() as conn:
            yield await conn.execution_options(isolation_level="AUTOCOMMIT")

    def _now(self) -> ColumnElement[int]:
        if self._postgresql:
            return cast(extract("epoch", func.now()) * MICROS, BigInteger)
        days = func.julianday("now") - UNIX_EPOCH_JULIAN_DAY
        return cast(days * (86400.0 * MICROS), BigInteger)

    @translated
    async def claim(self, node_id: str, *, hold: float, limit: int) -> list[OutboxEntry]:
        now = self._now()
        older = HOOK_OUTBOX.alias("older")
        head = HOOK_OUTBOX.alias("head")
        unheld = or_(C.claim_until_us.is_(None), C.claim_until_us < now)
        heads = (
            select(head.c.id)
            .where(
                head.c.next_us <= now,
                or_(head.c.claim_until_us.is_(None), head.c.claim_until_us < now),
                ~exists().where(
                    older.c.hook == head.c.hook,
                    older.c.stream_id == head.c.stream_id,
                    older.c.id < head.c.id,
                ),
            )
            .order_by(head.c.id)
            .limit(limit)
        )
        if self._postgresql:
            heads = heads.with_for_update(skip_locked=True, of=head)
        statement = (
            sql_update(HOOK_OUTBOX)
            # Checked again on the row itself: PostgreSQL re-reads a row that
            # another claim updated meanwhile, and then finds it held.
            .where(C.id.in_(heads), unheld)
            .values(claimed_by=node_id, claim_until_us=now + int(hold * MICROS))
            .returning(*COLUMNS)
        )
        async with self._statement(writes=True) as conn:
            rows = (await conn.execute(statement)).all()
        return sorted((OutboxEntry(*row) for row in rows), key=lambda entry: entry.row)

    @translated
    async def delivered(self, entry: OutboxEntry, node_id: str) -> None:
        # Whoever holds it now: a delivery is done once any attempt succeeded.
        async with self._statement(writes=True) as conn:
            await conn.execute(delete(HOOK_OUTBOX).where(C.id == entry.row))

    @translated
    async def retry(self, entry: OutboxEntry, node_id: str, *, delay: float) -> None:
        statement = (
            sql_update(HOOK_OUTBOX)
            .where(C.id == entry.row, C.claimed_by == node_id)
            .values(
                attempts=C.attempts + 1,
                next_us=self._now() + int(delay * MICROS),
                claimed_by=None,
                claim_until_us=None,
            )
        )
        async with self._statement(writes=True) as conn:
            await conn.execute(statement)

    @translated
    async def release(self, node_id: str) -> None:
        statement = (
            sql_update(HOOK_OUTBOX)
            .where(C.claimed_by == node_id)
            .values(claimed_by=None, claim_until_us=None)
        )
        async with self._statement(writes=True) as conn:
            await conn.execute(statement)

    def on_written(self, callback: Callable[[], None]) -> None:
        self._repo.outbox_written = callback

    @translated
    async def pending(self) -> int:
        async with self._statement(writes=False) as conn:
            return int(
                (await conn.execute(select(func.count()).select_from(HOOK_OUTBOX))).scalar_one()
            )
