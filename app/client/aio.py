"""The asyncio producer: a thin facade over the thread-based StreamWriter.

The sync writer already runs its connection on a sender thread, so the async
one wraps it rather than duplicating the resume logic on the event loop: a
write that fits the buffer returns without leaving the loop, and only a write
that must wait for buffer room (back-pressure), waiting for the 201 and waiting
for completion go to a worker thread via ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from app.client.common import StreamResult
from app.client.writer import StreamWriter


class AsyncStreamWriter:
    """``async with AsyncStreamWriter(url, "build-7") as w: await w.write(b"...")``;
    takes the same arguments as StreamWriter (callbacks run on its sender thread)."""

    def __init__(self, url: str, stream_id: str | None = None, **options: Any) -> None:
        self._writer = StreamWriter(url, stream_id, **options)

    @property
    def stream_id(self) -> str | None:
        return self._writer.stream_id

    @property
    def created(self) -> bool:
        return self._writer.created

    @property
    def size(self) -> int:
        return self._writer.size

    def start(self) -> AsyncStreamWriter:
        self._writer.start()
        return self

    async def wait_created(self, timeout: float | None = None) -> str:
        return await asyncio.to_thread(self._writer.wait_created, timeout)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        taken = self._writer.try_write(view)
        if taken < len(view):
            await asyncio.to_thread(self._writer.write, view[taken:])

    async def finish(self) -> None:
        self._writer.finish()

    async def wait(self) -> StreamResult:
        return await asyncio.to_thread(self._writer.wait)

    async def close(self) -> StreamResult:
        self._writer.finish()
        return await self.wait()

    async def abort(self) -> None:
        await asyncio.to_thread(self._writer.abort)

    async def __aenter__(self) -> AsyncStreamWriter:
        return self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            await self.close()
        else:
            await self.abort()
