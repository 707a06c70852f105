"""SqlMetadataRepo: stream rows through SQLAlchemy (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    event,
    false,
    func,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.errors import InsufficientStorage, NotReady, StorageUnavailable, StreamExists
from app.storage.base import ListQuery
from app.storage.migrate import migrate
from app.storage.space import out_of_space
from app.streams.models import Link, StreamInfo, StreamState, from_micros, to_micros, utcnow


class Base(DeclarativeBase):
    pass


class StreamRow(Base):
    __tablename__ = "streams"

    # Byte order on PostgreSQL too (SQLite's default): listing order and cursors
    # must not depend on the server's locale.
    id: Mapped[str] = mapped_column(
        String(200).with_variant(String(200, collation="C"), "postgresql"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(40))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    state: Mapped[str] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Microseconds since the epoch: exact ordering on every database.
    created_us: Mapped[int] = mapped_column(BigInteger)
    updated_us: Mapped[int] = mapped_column(BigInteger)
    finished_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    expected_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    tus: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        Index("ix_streams_created", "created_us", "id"),
        Index("ix_streams_state_created", "state", "created_us", "id"),
        Index("ix_streams_finished", "finished_us"),
    )


STREAMS: Table = StreamRow.__table__  # type: ignore[assignment]


class LeaseRow(Base):
    """One producer lease per stream id (app/storage/sql_leases.py). Times are
    microseconds since the epoch by the database's clock, never a node's."""

    __tablename__ = "leases"

    stream_id: Mapped[str] = mapped_column(
        String(200).with_variant(String(200, collation="C"), "postgresql"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(40))
    node_id: Mapped[str] = mapped_column(String(200))
    epoch: Mapped[int] = mapped_column(BigInteger)
    expires_us: Mapped[int] = mapped_column(BigInteger)
    # No index on expires_us: renewals change only that column, so PostgreSQL
    # can update the rows in place (HOT); expired() scans a table that has
    # one row per live stream.
    released: Mapped[bool] = mapped_column(Boolean)


LEASES: Table = LeaseRow.__table__  # type: ignore[assignment]


class SecretRow(Base):
    """Values every node on the database must share, made by whichever node
    starts first (the share-link signing key). Never logged."""

    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


SECRETS: Table = SecretRow.__table__  # type: ignore[assignment]


class HookOutboxRow(Base):
    """A post-* webhook delivery not yet acknowledged by its receiver (app/hooks.py),
    written in the transaction of the state change it reports. Rows of one
    (hook, stream) go out in id order; a delivered row is deleted. Times are
    microseconds since the epoch; next_us and claim_until_us by the database's clock."""

    __tablename__ = "hook_outbox"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    delivery_id: Mapped[str] = mapped_column(String(40))  # a uuid: the receivers' dedup key
    hook: Mapped[str] = mapped_column(Text)  # the hook's url
    event: Mapped[str] = mapped_column(String(16))
    stream_id: Mapped[str] = mapped_column(
        String(200).with_variant(String(200, collation="C"), "postgresql")
    )
    payload: Mapped[str] = mapped_column(Text)  # the stream as GET /streams/{id} shows it, JSON
    created_us: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer)
    next_us: Mapped[int] = mapped_column(BigInteger)
    claimed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    claim_until_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (Index("ix_hook_outbox_chain", "hook", "stream_id", "id"),)


HOOK_OUTBOX: Table = HookOutboxRow.__table__  # type: ignore[assignment]


class LinkRow(Base):
    """A name pointing at a stream id (app/streams/links.py). No foreign key: a
    link outlives the stream it names and works again once the id is re-created."""

    __tablename__ = "links"

    name: Mapped[str] = mapped_column(
        String(200).with_variant(String(200, collation="C"), "postgresql"), primary_key=True
    )
    stream_id: Mapped[str] = mapped_column(
        String(200).with_variant(String(200, collation="C"), "postgresql")
    )
    created_us: Mapped[int] = mapped_column(BigInteger)
    updated_us: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_links_stream", "stream_id", "name"),)


def _to_link(row: LinkRow) -> Link:
    return Link(
        name=row.name,
        stream_id=row.stream_id,
        created_at=from_micros(row.created_us),
        updated_at=from_micros(row.updated_us),
    )


def _us(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def _dt(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def _to_info(row: StreamRow) -> StreamInfo:
    created = _dt(row.created_us)
    updated = _dt(row.updated_us)
    assert created is not None and updated is not None
    return StreamInfo(
        id=row.id,
        key=row.key,
        metadata=row.meta,
        state=StreamState(row.state),
        size=row.size,
        sha256=row.sha256,
        created_at=created,
        updated_at=updated,
        finished_at=_dt(row.finished_us),
        expected_size=row.expected_size,
        tus=bool(row.tus),
    )


def _row_values(info: StreamInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "key": info.key,
        "meta": info.metadata,
        "state": info.state.value,
        "size": info.size,
        "sha256": info.sha256,
        "created_us": _us(info.created_at),
        "updated_us": _us(info.updated_at),
        "finished_us": _us(info.finished_at),
        "expected_size": info.expected_size,
        "tus": info.tus,
    }


P = ParamSpec("P")
R = TypeVar("R")
SQLITE_FULL = 13  # "database or disk is full"
REPLACE_ATTEMPTS = 10


def _is_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL, PostgreSQL's class 53 (insufficient resources), or ENOSPC."""
    cause = getattr(exc, "orig", None) or exc
    code = getattr(cause, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == SQLITE_FULL)
    state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if isinstance(state, str):
        return state.startswith("53")
    if isinstance(cause, OSError):
        return out_of_space(cause)
    return "database or disk is full" in str(cause)


def translated(method: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """The database's own errors become 507 (full) or 503 (did not answer or
    commit). A failed write is rolled back as a whole by its transaction."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except (SQLAlchemyError, OSError) as exc:
            if _is_full(exc):
                raise InsufficientStorage(
                    "The database is out of disk space; nothing was changed."
                ) from None
            raise StorageUnavailable(
                "The metadata database did not save the change; nothing was changed."
            ) from None

    return call


class SqlMetadataRepo:
    """On PostgreSQL the namespace is the schema of every table (the connection's
    search_path); SQLite has a file of its own and ignores it."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "weft",
        hook_routes: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self._url = url
        self.namespace = namespace
        # Webhooks: the urls of the hooks that take each post-* event. A state
        # change writes their outbox rows in its own transaction (app/hooks.py).
        self._hook_routes = dict(hook_routes or {})
        self.outbox_written: Callable[[], None] = lambda: None
        self._sqlite = url.startswith("sqlite")
        connect_args: dict[str, Any] = {}
        if not self._sqlite:
            connect_args["server_settings"] = {"search_path": namespace}
        self._engine: AsyncEngine = create_async_engine(url, connect_args=connect_args)
        if self._sqlite:
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)
        # SQLite allows one writer; serialising here avoids "database is locked".
        # PostgreSQL takes concurrent writers (other nodes write anyway).
        self._write_lock: AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if self._sqlite else _NoLock()
        )

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def write_lock(self) -> AbstractAsyncContextManager[Any]:
        """Held around every write: others on the same engine (leases) take it too."""
        return self._write_lock

    async def start(self) -> None:
        await migrate(self._engine, self.namespace)

    async def close(self) -> None:
        await self._engine.dispose()

    @translated
    async def insert(self, info: StreamInfo, *, replace: bool) -> StreamInfo | None:
        # A replace that lost a race with another node's insert of the same id
        # (the row it waited for was deleted, the new one not yet visible) tries again.
        for _ in range(REPLACE_ATTEMPTS - 1):
            try:
                return await self._insert(info, replace=replace)
            except StreamExists:
                if not replace:
                    raise
        return await self._insert(info, replace=replace)

    async def _insert(self, info: StreamInfo, *, replace: bool) -> StreamInfo | None:
        async with self._write_lock, self._sessions.begin() as session:
            # FOR UPDATE (PostgreSQL): a concurrent replace of the row waits for this one.
            old = await session.get(StreamRow, info.id, with_for_update=True)
            replaced = _to_info(old) if old is not None else None
            if old is not None:
                if not replace:
                    raise StreamExists(info.id)
                await session.delete(old)
                await session.flush()
            session.add(StreamRow(**_row_values(info)))
            try:
                await session.flush()
            except IntegrityError:
                raise StreamExists(info.id) from None
            if replaced is not None:
                self._enqueue(session, "post-delete", replaced)
            hooked = self._enqueue(session, "post-create", info)
        if hooked:
            self.outbox_written()
        return replaced

    @translated
    async def get(self, stream_id: str) -> StreamInfo | None:
        async with self._sessions() as session:
            row = await session.get(StreamRow, stream_id)
            return _to_info(row) if row is not None else None

    @translated
    async def update(self, info: StreamInfo) -> bool:
        values = _row_values(info)
        for fixed in ("id", "key", "meta", "created_us"):
            values.pop(fixed)
        async with self._write_lock, self._sessions.begin() as session:
            result = await session.execute(
                update(StreamRow)
                .where(
                    StreamRow.id == info.id,
                    StreamRow.key == info.key,
                    StreamRow.state == StreamState.LIVE.value,
                )
                .values(**values)
            )
            changed = bool(getattr(result, "rowcount", 0))
            hooked = False
            if changed and info.state is StreamState.COMPLETE:
                hooked = self._enqueue(session, "post-complete", info)
            elif changed and info.state is StreamState.ABANDONED:
                hooked = self._enqueue(session, "post-abandon", info)
        if hooked:
            self.outbox_written()
        return changed

    @translated
    async def checkpoint(self, sizes: list[tuple[str, str, int]]) -> None:
        if not sizes:
            return
        table = STREAMS
        statement = (
            update(table)  # a Core executemany: one statement, many rows
            .where(
                table.c.id == bindparam("sid"),
                table.c.key == bindparam("skey"),
                table.c.state == StreamState.LIVE.value,
            )
            .values(size=bindparam("ssize"), updated_us=bindparam("now"))
        )
        now = _us(utcnow())
        rows = [{"sid": sid, "skey": key, "ssize": size, "now": now} for sid, key, size in sizes]
        async with self._write_lock, self._engine.begin() as conn:
            await conn.execute(statement, rows)

    @translated
    async def delete(self, stream_id: str, key: str | None = None) -> StreamInfo | None:
        statement = delete(StreamRow).where(StreamRow.id == stream_id)
        if key is not None:
            statement = statement.where(StreamRow.key == key)
        # One statement: two nodes deleting the same row cannot both return it.
        async with self._write_lock, self._sessions.begin() as session:
            row = (await session.scalars(statement.returning(StreamRow))).one_or_none()
            removed = _to_info(row) if row is not None else None
            hooked = removed is not None and self._enqueue(session, "post-delete", removed)
        if hooked:
            self.outbox_written()
        return removed

    def _enqueue(self, session: AsyncSession, event: str, info: StreamInfo) -> bool:
        """Add the outbox rows of event to the transaction; whether there were any."""
        hooks = self._hook_routes.get(event, ())
        now = _us(utcnow())
        for hook in hooks:
            session.add(
                HookOutboxRow(
                    delivery_id=uuid.uuid4().hex,
                    hook=hook,
                    event=event,
                    stream_id=info.id,
                    payload=json.dumps(info.to_json()),
                    created_us=now,
                    attempts=0,
                    next_us=0,  # due now, by any clock
                )
            )
        return bool(hooks)

    def _meta_text(self, name: str) -> ColumnElement[Any]:
        """A metadata value as the text a filter compares with (metadata_text):
        strings as they are, numbers, booleans and null as JSON, objects and
        arrays as NULL (they match nothing)."""
        if self._sqlite:
            path = "$." + json.dumps(name)
            kind = func.json_type(StreamRow.meta, path)
            value: ColumnElement[Any] = cast(func.json_extract(StreamRow.meta, path), String)
        else:
            element = StreamRow.meta[name]
            kind = func.json_typeof(element)
            # ->> gives SQL NULL for a JSON null; the filter wants the text "null".
            value = element.as_string()
        return case(
            (kind.in_(["true", "false", "null"]), kind),
            (kind.in_(["object", "array"]), null()),
            else_=value,
        )

    @translated
    async def page(self, query: ListQuery) -> list[StreamInfo]:
        conditions: list[ColumnElement[bool]] = []
        if query.state is not None:
            conditions.append(StreamRow.state == query.state.value)
        if query.prefix:
            conditions.append(StreamRow.id.startswith(query.prefix, autoescape=True))
        for name, values in query.meta.items():
            conditions.extend(self._meta_text(name) == value for value in values)
        if query.before is not None:
            created_us, last_id = to_micros(query.before[0]), query.before[1]
            conditions.append(
                or_(
                    StreamRow.created_us < created_us,
                    and_(StreamRow.created_us == created_us, StreamRow.id < last_id),
                )
            )
        statement = (
            select(StreamRow)
            .where(*conditions)
            .order_by(StreamRow.created_us.desc(), StreamRow.id.desc())
            .limit(query.limit)
        )
        async with self._sessions() as session:
            rows = (await session.scalars(statement)).all()
            return [_to_info(row) for row in rows]

    @translated
    async def by_keys(self, keys: list[str]) -> list[StreamInfo]:
        found: list[StreamInfo] = []
        async with self._sessions() as session:
            for at in range(0, len(keys), 500):  # well within any bound-parameter limit
                statement = select(StreamRow).where(StreamRow.key.in_(keys[at : at + 500]))
                found.extend(_to_info(row) for row in await session.scalars(statement))
        return found

    @translated
    async def live(self) -> list[StreamInfo]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(StreamRow).where(StreamRow.state == StreamState.LIVE.value)
            )
            return [_to_info(row) for row in rows]

    @translated
    async def for_build(self, build_id: str) -> list[StreamInfo]:
        statement = select(StreamRow).where(
            or_(
                self._meta_text("buildId") == build_id,
                StreamRow.id.startswith(f"build-{build_id}-", autoescape=True),
            )
        )
        async with self._sessions() as session:
            return [_to_info(row) for row in await session.scalars(statement)]

    @translated
    async def finished_before(self, cutoff: datetime, limit: int) -> list[StreamInfo]:
        statement = (
            select(StreamRow)
            .where(StreamRow.finished_us.is_not(None), StreamRow.finished_us < to_micros(cutoff))
            .order_by(StreamRow.finished_us)
            .limit(limit)
        )
        async with self._sessions() as session:
            return [_to_info(row) for row in await session.scalars(statement)]

    @translated
    async def count_by_state(self) -> dict[StreamState, int]:
        statement = select(StreamRow.state, func.count()).group_by(StreamRow.state)
        async with self._sessions() as session:
            counts = {StreamState(state): n for state, n in (await session.execute(statement))}
        return {state: counts.get(state, 0) for state in StreamState}

    @translated
    async def total_size(self) -> int:
        statement = select(func.coalesce(func.sum(StreamRow.size), 0))
        async with self._sessions() as session:
            return int((await session.execute(statement)).scalar_one())

    @translated
    async def put_link(self, name: str, stream_id: str, now: datetime) -> tuple[Link, bool]:
        # Two first PUTs of one name on PostgreSQL: the loser's insert fails on
        # the key and its second attempt finds the row and repoints it.
        for attempt in range(2):
            try:
                return await self._put_link(name, stream_id, to_micros(now))
            except IntegrityError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _put_link(self, name: str, stream_id: str, now_us: int) -> tuple[Link, bool]:
        async with self._write_lock, self._sessions.begin() as session:
            row = await session.get(LinkRow, name, with_for_update=True)
            created = row is None
            if row is None:
                row = LinkRow(name=name, stream_id=stream_id, created_us=now_us, updated_us=now_us)
                session.add(row)
            else:
                row.stream_id, row.updated_us = stream_id, now_us
            await session.flush()
            return _to_link(row), created

    @translated
    async def get_link(self, name: str) -> Link | None:
        async with self._sessions() as session:
            row = await session.get(LinkRow, name)
            return _to_link(row) if row is not None else None

    @translated
    async def links(
        self, *, stream_id: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[Link]:
        statement = select(LinkRow).order_by(LinkRow.name).limit(limit)
        if stream_id is not None:
            statement = statement.where(LinkRow.stream_id == stream_id)
        if after is not None:
            statement = statement.where(LinkRow.name > after)
        async with self._sessions() as session:
            return [_to_link(row) for row in await session.scalars(statement)]

    @translated
    async def delete_link(self, name: str) -> bool:
        async with self._write_lock, self._sessions.begin() as session:
            result = await session.execute(delete(LinkRow).where(LinkRow.name == name))
        return bool(getattr(result, "rowcount", 0))

    @translated
    async def shared_secret(self, name: str, candidate: str) -> str:
        insert = (sqlite.insert if self._sqlite else postgresql.insert)(SECRETS)
        keep_first = insert.values(name=name, value=candidate).on_conflict_do_nothing(
            index_elements=[SECRETS.c.name]
        )
        async with self._write_lock, self._engine.begin() as conn:
            # A node racing this one either inserted first (this insert waits
            # for its commit, then does nothing) or inserts nothing after it.
            await conn.execute(keep_first)
            stored = await conn.execute(select(SECRETS.c.value).where(SECRETS.c.name == name))
            return str(stored.scalar_one())

    async def check(self) -> None:
        try:
            async with self._sessions() as session:
                await session.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError):
            raise NotReady("The metadata database does not answer.") from None


class _NoLock:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    # A prefix filter (LIKE) matches case-sensitively, as on PostgreSQL.
    cursor.execute("PRAGMA case_sensitive_like=ON")
    cursor.close()
