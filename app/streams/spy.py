"""The spy: every live stream multiplexed into one line-aware text stream (SPEC §3).

Each shown stream has a reader task (the ordinary replay-then-tail reader) that
feeds one small bounded queue; a slow spy client therefore only makes its
readers fall behind on disk. Lines of different streams never interleave: a
partial line is held back (up to LINE_LIMIT bytes) until its newline arrives
or its stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from app.errors import WeftError
from app.streams.models import EventKind, StreamState, metadata_matches

LINE_LIMIT = 4096
READ_BLOCK = 64 * 1024
QUEUE_ITEMS = 16
RESET = "\x1b[0m"
# Basic colours first, then distinct 256-colour foregrounds, so two streams on
# screen together never share one.
PALETTE: tuple[str, ...] = (
    "31",
    "32",
    "33",
    "34",
    "35",
    "36",
    "91",
    "92",
    "93",
    "94",
    "95",
    "96",
) + tuple(f"38;5;{n}" for n in range(20, 232) if (n - 16) % 36 >= 6 and n % 6 not in (0,))

_START, _END = object(), object()


@dataclass
class _Shown:
    colour: str | None
    partial: bytearray = field(default_factory=bytearray)


class Spy:
    def __init__(
        self,
        service: Any,
        *,
        color: bool = False,
        replay: bool = False,
        meta: dict[str, list[str]] | None = None,
    ) -> None:
        self._service = service
        self._color = color
        self._replay = replay
        self._meta = meta or {}
        self._queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue(QUEUE_ITEMS)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._shown: dict[str, _Shown] = {}
        self._last_data: str | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._run()

    async def _run(self) -> AsyncIterator[bytes]:
        async with self._service.hub.feed() as feed:
            watcher = asyncio.create_task(self._watch_created(feed))
            try:
                for stream_id in self._service.live_ids():
                    with contextlib.suppress(WeftError):
                        info = await self._service.info(stream_id)
                        if info.state is StreamState.LIVE:
                            self._show(info.id, info.metadata, 0 if self._replay else info.size)
                while True:
                    stream_id, item = await self._queue.get()
                    out = self._render(stream_id, item)
                    if out:
                        yield out
            finally:
                watcher.cancel()
                for task in self._tasks.values():
                    task.cancel()

    async def _watch_created(self, feed: Any) -> None:
        async for event in feed:
            if event.kind is EventKind.CREATED and event.info is not None:
                self._show(event.stream_id, event.info.metadata, 0)

    def _show(self, stream_id: str, metadata: dict[str, Any], offset: int) -> None:
        if stream_id in self._tasks or not metadata_matches(metadata, self._meta):
            return
        self._tasks[stream_id] = asyncio.create_task(self._follow(stream_id, offset))

    async def _follow(self, stream_id: str, offset: int) -> None:
        await self._queue.put((stream_id, _START))
        try:
            reader = await self._service.reader(stream_id, offset=offset)
            reader.block = READ_BLOCK
            async for data in reader:
                await self._queue.put((stream_id, data))
        except WeftError:
            pass  # gone before we could read it: show it as ended
        finally:
            await self._queue.put((stream_id, _END))

    # -- rendering ----------------------------------------------------------------

    def _render(self, stream_id: str, item: object) -> bytes:
        if item is _START:
            self._shown[stream_id] = _Shown(self._take_colour())
            return self._marker(stream_id, f"START: {stream_id}")
        shown = self._shown[stream_id]
        if item is _END:
            out = self._lines(stream_id, shown, [bytes(shown.partial)] if shown.partial else [])
            del self._shown[stream_id]
            del self._tasks[stream_id]
            return out + self._marker(stream_id, f"END: {stream_id}", shown.colour)
        assert isinstance(item, bytes)
        shown.partial += item
        cut = shown.partial.rfind(b"\n")
        lines: list[bytes] = []
        if cut >= 0:
            lines = bytes(shown.partial[:cut]).split(b"\n")
            del shown.partial[: cut + 1]
        while len(shown.partial) >= LINE_LIMIT:
            lines.append(bytes(shown.partial[:LINE_LIMIT]))
            del shown.partial[:LINE_LIMIT]
        return self._lines(stream_id, shown, lines)

    def _lines(self, stream_id: str, shown: _Shown, lines: list[bytes]) -> bytes:
        if not lines:
            return b""
        out = bytearray()
        if self._last_data != stream_id:
            out += self._marker(stream_id, f"{stream_id}:", shown.colour)
            self._last_data = stream_id
        for line in lines:
            if shown.colour is None:
                out += line + b"\n"
            else:
                out += f"\x1b[{shown.colour}m".encode() + line + RESET.encode() + b"\n"
        return bytes(out)

    def _marker(self, stream_id: str, text: str, colour: str | None = None) -> bytes:
        colour = colour or (self._shown[stream_id].colour if stream_id in self._shown else None)
        if colour is None:
            return f"{text}\n".encode()
        return f"\x1b[1;{colour}m{text}{RESET}\n".encode()

    def _take_colour(self) -> str | None:
        if not self._color:
            return None
        used = {shown.colour for shown in self._shown.values()}
        for colour in PALETTE:
            if colour not in used:
                return colour
        return PALETTE[len(self._shown) % len(PALETTE)]  # more streams than colours
