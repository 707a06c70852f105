"""One running process per node_id in a namespace, on PostgreSQL.

Leases, the sweeper and takeovers tell this node's streams from the others' by
node_id: two processes started with the same one would each renew, resume and
abandon the other's streams as their own. A session advisory lock on
(namespace, node_id), held on a connection of its own for the life of the
process, stops a second one at start with a message naming the key. A process
that dies, even by kill -9, drops its connection and the lock with it; a
frozen one keeps both, rightly: it is still that node. SQLite needs none of
this: its file serves one node.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.errors import ConfigError

log = logging.getLogger("weft")
# A process killed just before this one started may hold the lock until its
# backend has seen the connection close: a few milliseconds, rarely more.
WAIT_SECONDS = 5.0
POLL_SECONDS = 0.1


class NodeIdInUse(ConfigError):
    pass


def node_key(namespace: str, node_id: str) -> int:
    """A signed 64-bit pg_advisory_lock key per (namespace, node_id)."""
    digest = hashlib.sha256(f"weft-node:{namespace}:{node_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class NodeClaim:
    def __init__(self, engine: AsyncEngine, namespace: str, node_id: str) -> None:
        self._engine = engine
        self._namespace = namespace
        self._node_id = node_id
        self._conn: AsyncConnection | None = None

    async def take(self, wait: float = WAIT_SECONDS) -> None:
        """Hold the claim; raises NodeIdInUse when another process keeps it
        for ``wait`` seconds. Does nothing on a database other than PostgreSQL."""
        if self._engine.dialect.name != "postgresql" or self._conn is not None:
            return
        conn = await self._engine.connect()
        lock = text("SELECT pg_try_advisory_lock(:key)")
        key = {"key": node_key(self._namespace, self._node_id)}
        deadline = time.monotonic() + wait
        try:
            while True:
                taken = (await conn.execute(lock, key)).scalar()
                await conn.commit()
                if taken:
                    self._conn = conn
                    return
                if time.monotonic() >= deadline:
                    raise NodeIdInUse(
                        f"node_id {self._node_id!r} is in use by another running node of "
                        f"namespace {self._namespace!r}: give each node a node_id of its own"
                    )
                await asyncio.sleep(POLL_SECONDS)
        except BaseException:
            await conn.close()
            raise

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()  # the session ends, and its lock with it
