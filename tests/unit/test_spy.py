"""The spy renderer driven through a StreamService on in-memory fakes."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable

import pytest

from app.streams.service import StreamService
from app.streams.spy import LINE_LIMIT, QUEUE_ITEMS, Spy
from tests.unit.fakes import produce, running_service

ANSI = re.compile(r"\x1b\[[\d;]*m")


class SpyOutput:
    """Consumes a Spy in a task; tests wait on what it has rendered so far."""

    def __init__(self, spy: Spy) -> None:
        self.data = bytearray()
        self.mark = 0  # lines before this one were rendered before the test began
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._consume(spy))

    async def _consume(self, spy: Spy) -> None:
        async for chunk in spy:
            self.data += chunk
            self._changed.set()

    def lines(self) -> list[str]:
        text = self.data.decode()
        return text.split("\n")[:-1]  # complete lines only

    def plain(self) -> list[str]:
        """The lines without ANSI colour codes."""
        return [ANSI.sub("", line) for line in self.lines()]

    def new_lines(self) -> list[str]:
        return self.lines()[self.mark :]

    async def wait_for(self, check: Callable[[list[str]], bool], timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            while not check(self.lines()):
                self._changed.clear()
                await self._changed.wait()

    async def wait_line(self, line: str) -> None:
        try:
            await self.wait_for(lambda lines: line in lines)
        except TimeoutError:
            raise AssertionError(f"{line!r} never shown; got {self.lines()!r}") from None

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def spying(service: StreamService, **options: object) -> AsyncIterator[SpyOutput]:
    ready_meta = options.pop("ready_meta", {})
    output = SpyOutput(Spy(service, **options))  # type: ignore[arg-type]
    try:
        # The spy subscribes on its first step, some time after it is made: a
        # stream that comes and goes and is shown proves it is listening.
        for attempt in range(50):
            marker = f"END: ready-{attempt}"
            await produce(service, marker[5:], metadata=ready_meta)
            with contextlib.suppress(TimeoutError):
                await output.wait_for(lambda _, m=marker: m in output.plain(), 0.1)
                break
        else:
            raise AssertionError("the spy never showed a new stream")
        output.mark = len(output.lines())
        yield output
    finally:
        await output.close()


@pytest.fixture
async def service() -> AsyncIterator[StreamService]:
    async with running_service() as running:
        yield running


async def test_spy_renders_start_header_data_and_end_lines(service: StreamService) -> None:
    async with spying(service) as spy:
        await produce(service, "a", b"one\ntwo\n")
        await spy.wait_line("END: a")
    assert spy.new_lines() == ["START: a", "a:", "one", "two", "END: a"]


async def test_header_line_repeats_only_when_another_stream_wrote_between(
    service: StreamService,
) -> None:
    async with spying(service) as spy:
        await service.create("a", {})
        await service.create("b", {})
        async with service.producer("a") as pa, service.producer("b") as pb:
            await pa.append(b"a1\n")
            await spy.wait_line("a1")
            await pa.append(b"a2\n")
            await spy.wait_line("a2")
            await pb.append(b"b1\n")
            await spy.wait_line("b1")
            await pa.append(b"a3\n")
            await spy.wait_line("a3")
            await pa.complete()
            await pb.complete()
        await spy.wait_for(lambda lines: "END: a" in lines and "END: b" in lines)
    data = [line for line in spy.new_lines() if not line.startswith(("START:", "END:"))]
    assert data == ["a:", "a1", "a2", "b:", "b1", "a:", "a3"]


async def test_partial_line_is_held_until_its_newline(service: StreamService) -> None:
    async with spying(service) as spy:
        await service.create("a", {})
        await service.create("b", {})
        async with service.producer("a") as pa, service.producer("b") as pb:
            await pa.append(b"hel")
            await pb.append(b"world\n")
            await spy.wait_line("world")
            await pa.append(b"lo\n")
            await spy.wait_line("hello")
            await pa.complete()
            await pb.complete()
    assert "hel" not in spy.lines()


async def test_partial_line_longer_than_4k_is_emitted_in_4k_pieces(service: StreamService) -> None:
    async with spying(service) as spy:
        await service.create("a", {})
        async with service.producer("a") as producer:
            await producer.append(b"x" * (2 * LINE_LIMIT + 100))
            await spy.wait_for(lambda lines: lines.count("x" * LINE_LIMIT) == 2)
            await producer.append(b"y\n")
            await spy.wait_line("x" * 100 + "y")
            await producer.complete()


async def test_partial_last_line_gets_a_newline_at_end(service: StreamService) -> None:
    async with spying(service) as spy:
        await produce(service, "a", b"done\nno newline")
        await spy.wait_line("END: a")
    assert spy.lines()[-3:] == ["done", "no newline", "END: a"]


async def test_live_stream_is_shown_from_its_current_end(service: StreamService) -> None:
    await service.create("a", {})
    async with service.producer("a") as producer:
        await producer.append(b"before\n")
        async with spying(service) as spy:
            await spy.wait_line("START: a")
            await producer.append(b"after\n")
            await spy.wait_line("after")
            assert "before" not in spy.lines()


async def test_replay_shows_live_stream_from_its_start(service: StreamService) -> None:
    await service.create("a", {})
    async with service.producer("a") as producer:
        await producer.append(b"before\n")
        async with spying(service, replay=True) as spy:
            await producer.append(b"after\n")
            await spy.wait_line("after")
            lines = spy.lines()
            assert lines.index("before") < lines.index("after")


async def test_color_gives_concurrent_streams_distinct_colours_and_bold_markers(
    service: StreamService,
) -> None:
    async with spying(service, color=True) as spy:
        await service.create("a", {})
        await service.create("b", {})
        async with service.producer("a") as pa, service.producer("b") as pb:
            await pa.append(b"from a\n")
            await pb.append(b"from b\n")
            await spy.wait_for(lambda lines: any("from b" in line for line in lines))
            await pa.complete()
            await pb.complete()
        await spy.wait_for(lambda lines: any("END: b" in line for line in lines))
    text = spy.data.decode()
    colour_a = re.search(r"\x1b\[([\d;]+)mfrom a\x1b\[0m\n", text)
    colour_b = re.search(r"\x1b\[([\d;]+)mfrom b\x1b\[0m\n", text)
    assert colour_a and colour_b
    assert colour_a.group(1) != colour_b.group(1)
    for stream_id, colour in (("a", colour_a.group(1)), ("b", colour_b.group(1))):
        for marker in (f"START: {stream_id}", f"{stream_id}:", f"END: {stream_id}"):
            assert f"\x1b[1;{colour}m{marker}\x1b[0m\n" in text


async def test_meta_filter_shows_only_matching_streams(service: StreamService) -> None:
    async with spying(service, meta={"build": ["7"]}, ready_meta={"build": 7}) as spy:
        await produce(service, "other", b"no\n", metadata={"build": 8})
        await produce(service, "number", b"yes\n", metadata={"build": 7})
        await produce(service, "string", b"yes too\n", metadata={"build": "7"})
        await spy.wait_for(lambda lines: "END: number" in lines and "END: string" in lines)
    assert not any("other" in line for line in spy.lines())


async def test_deleted_stream_ends_with_its_partial_line(service: StreamService) -> None:
    async with spying(service) as spy:
        await service.create("a", {})
        async with service.producer("a") as producer:
            await producer.append(b"one\npart")
            await spy.wait_line("one")
            await service.delete("a")
        await spy.wait_line("END: a")
    assert spy.lines()[-2:] == ["part", "END: a"]


async def test_replaced_stream_is_shown_again_from_its_start(service: StreamService) -> None:
    async with spying(service) as spy:
        await service.create("a", {})
        async with service.producer("a") as producer:
            await producer.append(b"old\n")
            await spy.wait_line("old")
        await produce(service, "a", b"new\n", force=True)
        await spy.wait_line("new")
    lines = spy.lines()
    assert lines.index("END: a") < lines.index("new")


async def test_closing_a_spy_whose_queue_is_full_leaves_no_task_behind(
    service: StreamService,
) -> None:
    spy = Spy(service)
    rendered = aiter(spy)
    await service.create("ready", {})
    # Take one chunk so the spy is subscribed, then stop reading.
    assert await asyncio.wait_for(anext(rendered), 2) == b"START: ready\n"
    ids = [f"s{n}" for n in range(QUEUE_ITEMS + 4)]
    for stream_id in ids:
        await service.create(stream_id, {})
    for _ in range(200):  # let every follower run until the queue is full
        await asyncio.sleep(0)
    await rendered.aclose()  # type: ignore[attr-defined]
    for stream_id in ids:
        await service.delete(stream_id)
    me = asyncio.current_task()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2
    while loop.time() < deadline:
        others = [t for t in asyncio.all_tasks() if t is not me and "_follow" in repr(t)]
        if not others:
            break
        await asyncio.sleep(0.01)
    assert others == []


async def test_plain_spy_resets_a_colour_a_stream_left_on_before_another_streams_lines(
    service: StreamService,
) -> None:
    async with spying(service) as spy:
        await service.create("a", {})
        await service.create("b", {})
        async with service.producer("a") as pa, service.producer("b") as pb:
            await pa.append(b"\x1b[31mred, never reset\n")
            await spy.wait_line("\x1b[31mred, never reset")
            await pb.append(b"b1\n")
            await spy.wait_line("b1")
            await pa.append(b"plain\n")
            await spy.wait_line("plain")
            await pa.complete()
            await pb.complete()
        await spy.wait_for(lambda lines: "END: a" in lines and "END: b" in lines)
    raw = spy.lines()[spy.mark :]
    # The reset comes with b's next line (its START or header), not inside a's
    # line; a stream without escape codes of its own gets none.
    after = raw[raw.index("\x1b[31mred, never reset") + 1 :]
    assert after[0] in ("\x1b[0mb:", "\x1b[0mSTART: b")
    assert all("\x1b" not in line for line in after[1:])
