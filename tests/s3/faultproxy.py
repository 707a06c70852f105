"""A tiny HTTP proxy in front of the test S3 server that injects faults: answer 503
SlowDown, hold a request past the client's timeout, or cut a response body short,
each for the next N requests; or send request bodies up slowly. One request per
connection (it forces ``Connection: close`` both ways), which is all a fault test
needs."""

from __future__ import annotations

import asyncio
import contextlib
import threading

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.down = False  # drop every connection unanswered (the bucket is unreachable)
        self.fail_next = 0  # answer 503 SlowDown to this many requests
        self.delay_next = 0  # hold this many requests for delay_seconds, then drop them
        self.delay_seconds = 0.0
        self.cut_next = 0  # close this many responses after cut_after body bytes
        self.cut_after = 0
        self.upload_rate = 0  # bytes per second a request body may go up at; 0: no limit
        self.requests: list[str] = []  # "METHOD path" of every request received
        self.faults = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()  # both sides of every connection

    @property
    def endpoint_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            # A connection accepted just before the close gets its transport (and
            # its task) a few loop turns later: wait for those too, or their
            # sockets outlive the loop (an unclosed-transport ResourceWarning).
            for _ in range(5):
                await asyncio.sleep(0.01)
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
            # Whatever a cancelled task left open closes now, and its close
            # completes on this loop before the loop stops.
            for writer in self._writers:
                writer.transport.abort()
            await asyncio.sleep(0.05)
            await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track(writer)
        task = asyncio.create_task(self._handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _track(self, writer: asyncio.StreamWriter) -> None:
        self._writers = {w for w in self._writers if not w.transport.is_closing()}
        self._writers.add(writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        self.requests.append(" ".join(lines[0].split(" ")[:2]))
        if self.down:
            self.faults += 1
            writer.close()
            return
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        expect = headers.get("expect", "").lower() == "100-continue"
        try:
            if self.fail_next > 0:
                self.fail_next -= 1
                self.faults += 1
                if not expect:
                    await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                    + f"Content-Length: {len(SLOWDOWN)}\r\nConnection: close\r\n\r\n".encode()
                    + SLOWDOWN
                )
                await writer.drain()
                return
            if self.delay_next > 0:
                self.delay_next -= 1
                self.faults += 1
                await asyncio.sleep(self.delay_seconds)
                return
            cut: int | None = None
            if self.cut_next > 0:
                self.cut_next -= 1
                self.faults += 1
                cut = self.cut_after
            await self._forward(lines, length, reader, writer, cut)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _forward(
        self,
        lines: list[str],
        length: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        cut: int | None,
    ) -> None:
        # Connection is not among the signed headers, so rewriting it keeps SigV4 valid.
        kept = [line for line in lines[1:] if line and not line.lower().startswith("connection:")]
        head = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1")
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._track(up_writer)
        try:
            up_writer.write(head)

            async def upload() -> None:
                remaining = length
                while remaining > 0:
                    piece = 1 << 16 if self.upload_rate else 1 << 20
                    data = await reader.read(min(remaining, piece))
                    if not data:
                        return
                    remaining -= len(data)
                    up_writer.write(data)
                    await up_writer.drain()
                    if self.upload_rate:  # a slow link: uploads stay in flight a while
                        await asyncio.sleep(len(data) / self.upload_rate)

            sending = asyncio.create_task(upload())
            try:
                sent = 0
                body_started = False
                buffered = b""
                while True:
                    data = await up_reader.read(1 << 16)
                    if not data:
                        break
                    if cut is not None:
                        if not body_started:  # count body bytes only (GETs: no 100 Continue)
                            buffered += data
                            end = buffered.find(b"\r\n\r\n")
                            if end < 0:
                                continue
                            body_started = True
                            data, sent = buffered, -(end + 4)
                        if sent + len(data) > cut:
                            writer.write(data[: cut - sent])
                            await writer.drain()
                            return
                        sent += len(data)
                    writer.write(data)
                    await writer.drain()
            finally:
                sending.cancel()
                await asyncio.gather(sending, return_exceptions=True)
        finally:
            up_writer.close()
            with contextlib.suppress(ConnectionError):
                await up_writer.wait_closed()


class ProxyThread:
    """A FaultProxy on an event loop of its own thread, for tests that drive a
    server process with blocking clients. Set its flags (``proxy.down``) directly."""

    def __init__(self, upstream_port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(FaultProxy(upstream_port).start(), self._loop)
        self.proxy = started.result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
