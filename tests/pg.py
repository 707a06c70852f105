"""The PostgreSQL that tests run against, and a schema (namespace) per use.

``WEFTTEST_PG_URL`` names the server (default: the local one, trust auth).
Without it reachable, tests that need it skip with the reason; under CI
(``CI=true``) they fail instead, so a missing database cannot pass as green.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

PG_URL = os.environ.get("WEFTTEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
# The namespaces of one test session start with this, so the session can drop
# exactly its own at the end, whatever other runs share the server.
SESSION_PREFIX = f"weft_t{uuid.uuid4().hex[:10]}"
# Every namespace also carries the second it was made, so that a session killed
# before its end (whose schemas nobody drops) can be cleaned up by a later one:
# a schema serves one test, and no test runs for STALE_SECONDS.
STAMPED = re.compile(r"^weft_t[0-9a-f]{10}_[0-9]+_([0-9]{10,})$")
STALE_SECONDS = 3600
_counter = 0
_reachable: str | None = None  # "" when reachable, else why not


def _dsn() -> str:
    return PG_URL.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _execute(*statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_dsn(), timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _in_thread(work: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine on a loop of its own, whether or not one is running here."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, work).result()


def _run(*statements: str) -> None:
    _in_thread(_execute(*statements))


def run_query(query: str) -> list[tuple[Any, ...]]:
    """The rows of one query, on a connection of its own."""
    rows: list[tuple[Any, ...]] = []

    async def fetch() -> None:
        import asyncpg

        conn = await asyncpg.connect(_dsn(), timeout=5)
        try:
            rows.extend(tuple(record) for record in await conn.fetch(query))
        finally:
            await conn.close()

    _in_thread(fetch())
    return rows


def unreachable_reason() -> str:
    global _reachable
    if _reachable is None:
        try:
            _run("SELECT 1")
            _reachable = ""
        except Exception as exc:  # any failure to connect is the reason to skip
            _reachable = f"PostgreSQL at {PG_URL} is not reachable: {type(exc).__name__}: {exc}"
        else:
            drop_stale_namespaces()
    return _reachable


def require_pg() -> None:
    reason = unreachable_reason()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: PostgreSQL tests must run)", pytrace=False)
        pytest.skip(reason)


def new_namespace() -> str:
    """A schema name no one else uses; it is dropped by drop_session_namespaces."""
    global _counter
    _counter += 1
    return f"{SESSION_PREFIX}_{_counter}_{int(time.time())}"


def drop_namespace(namespace: str) -> None:
    _run(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')


def drop_stale_namespaces() -> None:
    """Drop the namespaces of earlier sessions made over STALE_SECONDS ago. Names
    without a timestamp (older test code, maybe running now) are left alone."""

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(_dsn(), timeout=5)
        try:
            rows = await conn.fetch(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, 'weft_t')"
            )
            cutoff = time.time() - STALE_SECONDS
            for (name,) in rows:
                stamp = STAMPED.match(name)
                if stamp and int(stamp.group(1)) < cutoff:
                    # Another session may be dropping it too: not this one's business.
                    with contextlib.suppress(asyncpg.PostgresError):
                        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()

    _in_thread(drop())


def drop_session_namespaces() -> None:
    if _reachable != "":
        return

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(_dsn(), timeout=5)
        try:
            names = await conn.fetch(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)",
                SESSION_PREFIX,
            )
            for (name,) in names:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()

    _in_thread(drop())


def fresh_database(kind: str, tmp_path: Path) -> tuple[str, str]:
    """(database_url, namespace) of an empty database: a SQLite file under
    tmp_path, or a new schema of the test PostgreSQL."""
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'weft.db'}", "weft"
    require_pg()
    return PG_URL, new_namespace()
