"""The spy: every live stream multiplexed into one line-aware text stream (SPEC §3).

Each shown stream has a reader task (the ordinary replay-then-tail reader) that
feeds one small bounded queue; a slow spy client therefore only makes its
readers fall behind on disk. Lines of different streams never interleave: a
partial line is held back (up to LINE_LIMIT bytes) until its newline arrives
or its stream ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from app.errors import WeftError
from app.storage.base import ListQuery
from app.streams.listing import MAX_LIMIT, decode_cursor
from app.streams.models import EventKind, StreamInfo, StreamState, from_micros, metadata_matches

LINE_LIMIT = 4096
READ_BLOCK = 64 * 1024
QUEUE_ITEMS = 16
RESET = "\x1b[0m"
# Basic colours first, then distinct 256-colour foregrounds, so two streams on
# screen together never share one.
PALETTE: tuple[str, ...] = (
    "31", "32", "33", "34", "35", "36", "91", "92", "93", "94", "95", "96",
) + tuple(f"38;5;{n}" for n in range(20, 232) if (n - 16) % 36 >= 6 and n % 6 != 0)  # fmt: skip

_START, _END = object(), object()


@dataclass(eq=False)
class _Show:
    """One incarnation of a stream on the spy's screen."""

    stream_id: str
    key: str
    colour: str | None = None
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
        self._queue: asyncio.Queue[tuple[_Show, object]] = asyncio.Queue(QUEUE_ITEMS)
        self._tasks: dict[_Show, asyncio.Task[None]] = {}
        self._on_screen: set[_Show] = set()
        self._last_data: _Show | None = None
        # Plain spy: the stream whose own escape codes may have left a colour on.
        self._open_sgr: _Show | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._run()

    async def _run(self) -> AsyncIterator[bytes]:
        async with self._service.hub.feed() as feed:
            watcher = asyncio.create_task(self._watch_created(feed))
            try:
                for info in await self._live_streams():
                    offset = 0 if self._replay else info.size
                    self._show(info.id, info.key, info.metadata, offset)
                while True:
                    show, item = await self._queue.get()
                    out = self._render(show, item)
                    if out:
                        yield out
            finally:
                tasks = [watcher, *self._tasks.values()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _live_streams(self) -> list[StreamInfo]:
        """Every live stream the database knows, oldest first: those of every
        node in a cluster, not only the ones this process writes."""
        query = ListQuery(state=StreamState.LIVE, meta=self._meta, limit=MAX_LIMIT)
        found: list[StreamInfo] = []
        while True:
            page, cursor = await self._service.list_page(query)
            found += page
            if cursor is None:
                return found[::-1]
            created_us, stream_id = decode_cursor(cursor)
            query = replace(query, before=(from_micros(created_us), stream_id))

    async def _watch_created(self, feed: Any) -> None:
        async for event in feed:
            if event.kind is EventKind.CREATED and event.info is not None:
                self._show(event.stream_id, event.key, event.info.metadata, 0)

    def _show(self, stream_id: str, key: str, metadata: dict[str, Any], offset: int) -> None:
        if not metadata_matches(metadata, self._meta):
            return
        if any(show.stream_id == stream_id and show.key == key for show in self._tasks):
            return
        show = _Show(stream_id, key)
        self._tasks[show] = asyncio.create_task(self._follow(show, offset))

    async def _follow(self, show: _Show, offset: int) -> None:
        await self._queue.put((show, _START))
        try:
            reader = await self._service.reader(show.stream_id, offset=offset)
            if reader.info.key == show.key:
                reader.block = READ_BLOCK
                async for data in reader:
                    await self._queue.put((show, data))
        except WeftError:
            pass  # gone before we could read it: show it as ended
        # Not in a finally: a cancelled follower must not wait on a full queue.
        await self._queue.put((show, _END))

    # -- rendering ----------------------------------------------------------------

    def _render(self, show: _Show, item: object) -> bytes:
        if item is _START:
            show.colour = self._take_colour()
            self._on_screen.add(show)
            return self._switch(show) + self._marker(show, f"START: {show.stream_id}")
        if item is _END:
            rest = [bytes(show.partial)] if show.partial else []
            out = self._lines(show, rest)
            out = out + self._switch(show) + self._marker(show, f"END: {show.stream_id}")
            self._on_screen.discard(show)
            self._tasks.pop(show, None)
            return out
        assert isinstance(item, bytes | memoryview)
        show.partial += item
        cut = show.partial.rfind(b"\n")
        lines: list[bytes] = []
        if cut >= 0:
            lines = bytes(show.partial[:cut]).split(b"\n")
            del show.partial[: cut + 1]
        while len(show.partial) >= LINE_LIMIT:
            lines.append(bytes(show.partial[:LINE_LIMIT]))
            del show.partial[:LINE_LIMIT]
        return self._lines(show, lines)

    def _lines(self, show: _Show, lines: list[bytes]) -> bytes:
        if not lines:
            return b""
        out = bytearray(self._switch(show))
        if self._last_data is not show:
            out += self._marker(show, f"{show.stream_id}:")
            self._last_data = show
        for line in lines:
            if show.colour is None:
                out += line + b"\n"
                if b"\x1b[" in line:
                    self._open_sgr = show
            else:
                out += f"\x1b[{show.colour}m".encode() + line + RESET.encode() + b"\n"
        return bytes(out)

    def _switch(self, show: _Show) -> bytes:
        """A reset before another stream's output when the last one's own
        colour codes may still be on: one stream's colour never bleeds into
        the next one's lines (with ?color every line is reset already)."""
        if self._open_sgr is None or self._open_sgr is show:
            return b""
        self._open_sgr = None
        return RESET.encode()

    def _marker(self, show: _Show, text: str) -> bytes:
        if show.colour is None:
            return f"{text}\n".encode()
        return f"\x1b[1;{show.colour}m{text}{RESET}\n".encode()

    def _take_colour(self) -> str | None:
        if not self._color:
            return None
        used = {show.colour for show in self._on_screen}
        for colour in PALETTE:
            if colour not in used:
                return colour
        return PALETTE[len(self._on_screen) % len(PALETTE)]  # more streams than colours
