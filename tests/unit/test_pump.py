"""The producer's body pump (app/api/produce.py): one append in flight, what
arrives meanwhile goes out as the next append in one piece, nothing waits for
a message that may never come."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from app.api import produce

T = TypeVar("T")


class SlowProducer:
    """Appends that take until the test lets each one finish (a JetStream ack)."""

    stream_id = "s"

    def __init__(self) -> None:
        self.appends: list[bytes] = []
        self.release: asyncio.Queue[None] = asyncio.Queue()
        self.size = 0

    async def receive(self, receive: Callable[[], Awaitable[T]]) -> T:
        return await receive()  # as the session does, less its replace()

    async def append(self, data: bytes) -> int:
        self.appends.append(data)
        await self.release.get()
        self.size += len(data)
        return self.size


class Body:
    """An ASGI receive fed by the test."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.calls = 0

    async def receive(self) -> dict[str, Any]:
        self.calls += 1
        return await self.queue.get()

    def send(self, body: bytes, more: bool = True) -> None:
        self.queue.put_nowait({"type": "http.request", "body": body, "more_body": more})


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_chunks_that_arrive_during_an_append_go_out_as_one() -> None:
    body, producer = Body(), SlowProducer()
    pumping = asyncio.ensure_future(produce.pump(body.receive, producer))  # type: ignore[arg-type]
    body.send(b"a")
    await settle()
    assert producer.appends == [b"a"]
    for piece in (b"b", b"c", b"d"):
        body.send(piece)
    await settle()
    assert producer.appends == [b"a"]  # still in flight: the rest waits, read
    producer.release.put_nowait(None)
    await settle()
    assert producer.appends == [b"a", b"bcd"]
    producer.release.put_nowait(None)
    body.send(b"e", more=False)
    producer.release.put_nowait(None)
    assert await asyncio.wait_for(pumping, 5) is True
    assert b"".join(producer.appends) == b"abcde" and producer.size == 5


async def test_a_lone_chunk_goes_out_when_the_append_before_it_ends() -> None:
    body, producer = Body(), SlowProducer()
    pumping = asyncio.ensure_future(produce.pump(body.receive, producer))  # type: ignore[arg-type]
    body.send(b"line 1\n")
    await settle()
    body.send(b"line 2\n")  # and then nothing for a while
    await settle()
    producer.release.put_nowait(None)
    await settle()
    assert producer.appends == [b"line 1\n", b"line 2\n"]
    producer.release.put_nowait(None)
    body.queue.put_nowait({"type": "http.disconnect"})
    assert await asyncio.wait_for(pumping, 5) is False
    assert producer.size == 14


async def test_reading_ahead_stops_at_ahead_bytes() -> None:
    body, producer = Body(), SlowProducer()
    pumping = asyncio.ensure_future(produce.pump(body.receive, producer))  # type: ignore[arg-type]
    body.send(b"x")
    await settle()
    chunk = b"y" * (produce.AHEAD // 4)
    for _ in range(8):
        body.send(chunk)
    await settle()
    assert body.queue.qsize() == 4  # AHEAD read, the rest left in the socket
    for _ in range(10):  # every append from now on ends at once
        producer.release.put_nowait(None)
    body.send(b"", more=False)
    assert await asyncio.wait_for(pumping, 5) is True
    assert producer.size == 1 + 8 * len(chunk)


async def test_a_chunk_after_an_append_ended_is_not_lost() -> None:
    body, producer = Body(), SlowProducer()
    pumping = asyncio.ensure_future(produce.pump(body.receive, producer))  # type: ignore[arg-type]
    body.send(b"one")
    await settle()
    producer.release.put_nowait(None)  # it ends while the next receive waits
    await settle()
    body.send(b"two")
    await settle()
    producer.release.put_nowait(None)
    body.send(b"", more=False)
    assert await asyncio.wait_for(pumping, 5) is True
    assert producer.appends == [b"one", b"two"] and body.calls == 3
