"""``tail``: producers writing timestamped lines into chunked POSTs, readers
measuring when each line arrives (scenarios 3 and 4, and bin/stream's lone lines)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import socket
import time
from array import array
from collections.abc import Callable
from typing import Any

from bench.loadgen.common import NS, Commands, ResponseParser, cpu_now, emit, make_line


class Stats:
    def __init__(self) -> None:
        self.latency_us = array("q")
        self.errors = 0
        self.samples: list[str] = []
        self.lines_sent = 0
        self.lines_received = 0
        self.bytes_received = 0

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.samples) < 20:
            self.samples.append(message)


class TailReader(asyncio.Protocol):
    def __init__(self, stats: Stats, stream: int, expected_lines: int, head_only: bool) -> None:
        self.stats = stats
        self.stream = stream
        self.expected = expected_lines
        self.head_only = head_only  # raw TCP: no HTTP response
        self.next_seq = 0
        self.pending = b""
        self.attached = asyncio.get_running_loop().create_future()
        self.finished = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser(self._body)
        self._now = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.head_only and not self.attached.done():
            self.attached.set_result(True)

    def data_received(self, data: bytes) -> None:
        self._now = NS()
        if self.head_only:
            self._body(data)
            return
        self.parser.feed(data)
        if self.parser.head_done and not self.attached.done():
            self.attached.set_result(self.parser.status)
        if self.parser.error:
            self._finish(self.parser.error)
        elif self.parser.done:
            self._finish(None)

    def _body(self, data: bytes) -> None:
        self.stats.bytes_received += len(data)
        buf = self.pending + data if self.pending else data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            self._line(buf[start:nl], self._now)
            start = nl + 1
        self.pending = buf[start:]

    def _line(self, line: bytes, now: int) -> None:
        try:
            ts, seq, stream = int(line[0:20]), int(line[21:29]), int(line[30:36])
        except ValueError:
            self.stats.error(f"stream {self.stream}: unparsable line {line[:40]!r}")
            return
        if stream != self.stream:
            self.stats.error(f"stream {self.stream}: line of stream {stream}")
        if seq != self.next_seq:
            self.stats.error(f"stream {self.stream}: seq {seq}, expected {self.next_seq}")
        self.next_seq = seq + 1
        self.stats.lines_received += 1
        self.stats.latency_us.append((now - ts) // 1000)

    def connection_lost(self, exc: Exception | None) -> None:
        self.parser.connection_lost()
        if self.head_only:
            self._finish(None)
        elif not self.parser.done:
            self._finish(f"connection lost before the response ended ({exc})")
        if not self.attached.done():
            self.attached.set_result(0)

    def _finish(self, error: str | None) -> None:
        if self.finished.done():
            return
        if error:
            self.stats.error(f"stream {self.stream}: {error}")
        if self.pending:
            self.stats.error(f"stream {self.stream}: {len(self.pending)} bytes after last line")
        if self.next_seq != self.expected:
            self.stats.error(f"stream {self.stream}: got {self.next_seq}/{self.expected} lines")
        self.finished.set_result(True)
        if self.transport is not None:
            self.transport.close()


class TailProducer(asyncio.Protocol):
    def __init__(self, stats: Stats, stream: int, target: str) -> None:
        self.stats = stats
        self.stream = stream
        self.target = target
        self.body = bytearray()
        self.head = asyncio.get_running_loop().create_future()
        self.established = asyncio.get_running_loop().create_future()
        self.finished = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser(self._body)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.target == "raw":
            self.head.set_result(200)
            self.established.set_result(True)

    def _body(self, data: bytes) -> None:
        self.body += data
        if self.target == "piping" and b"Start sending" in self.body:
            if not self.established.done():
                self.established.set_result(True)

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        if self.parser.head_done and not self.head.done():
            self.head.set_result(self.parser.status)
            if self.target == "weft":
                self.established.set_result(True)
        if self.parser.done and not self.finished.done():
            self.finished.set_result(True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.parser.connection_lost()
        for future in (self.head, self.established):
            if not future.done():
                future.set_result(False)
        if not self.finished.done():
            self.finished.set_result(self.target == "raw")

    def send_line(self, seq: int, size: int) -> None:
        assert self.transport is not None
        ts = NS()
        line = make_line(ts, seq, self.stream, size)
        if self.target == "raw":
            self.transport.write(line)
        else:
            self.transport.write(b"%x\r\n%b\r\n" % (len(line), line))
        self.stats.lines_sent += 1

    def end(self) -> None:
        assert self.transport is not None
        if self.target == "raw":
            self.transport.close()
        else:
            self.transport.write(b"0\r\n\r\n")


def stream_id(prefix: str, index: int) -> str:
    return f"{prefix}{index:06d}"


def request_path(args: argparse.Namespace, stream: int) -> str:
    """Weft: /stream/{id}. piping-server: /{id}, with ?n=N for N receivers (sender
    and receivers must agree on N)."""
    if args.target == "piping":
        query = f"?n={args.readers}" if args.readers > 1 else ""
        return f"/{stream_id(args.prefix, stream)}{query}"
    return f"/stream/{stream_id(args.prefix, stream)}"


async def connect_all(
    n: int, factory: Callable[[int], asyncio.Protocol], host: str, port: int, concurrency: int
) -> list[Any]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Any:
        async with gate:
            for attempt in range(5):
                try:
                    _, proto = await loop.create_connection(lambda: factory(i), host, port)
                    return proto
                except OSError:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.1 * (attempt + 1))

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def run_tail(args: argparse.Namespace) -> dict[str, Any]:
    commands = Commands()
    stats = Stats()
    lines = round(args.duration * 1000 / args.interval_ms)
    streams = range(args.first, args.first + args.streams)
    host, port = args.host, args.port
    producers: list[TailProducer] = []
    readers: list[TailReader] = []
    failures: list[str] = []

    async def produce_requests() -> None:
        nonlocal producers
        producers = await connect_all(
            len(streams),
            lambda i: TailProducer(stats, streams[i], args.target),
            host,
            port,
            args.concurrency,
        )
        if args.target == "raw":
            return
        for p in producers:
            path = request_path(args, p.stream)
            assert p.transport is not None
            p.transport.write(
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            )
        for p in producers:
            status = await asyncio.wait_for(p.head, 30)
            if status not in (200, 201):
                failures.append(f"producer of stream {p.stream} got status {status}")

    async def read_requests() -> None:
        nonlocal readers
        total = len(streams) * args.readers
        read_port = args.read_port or port  # a cluster: another node than the producers'
        readers = await connect_all(
            total,
            lambda i: TailReader(stats, streams[i // args.readers], lines, args.target == "raw"),
            host,
            read_port,
            args.concurrency,
        )
        if args.target == "raw":
            return
        for r in readers:
            path = request_path(args, r.stream)
            assert r.transport is not None
            r.transport.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{read_port}\r\n\r\n".encode())
        if args.target == "weft":  # piping answers a receiver only once data flows
            for r in readers:
                status = await asyncio.wait_for(r.attached, 30)
                if status != 200:
                    failures.append(f"reader of stream {r.stream} got status {status}")

    async def raw_listen() -> None:
        """raw target, reader role: accept producers' direct connections."""
        nonlocal readers
        loop = asyncio.get_running_loop()
        accepted: list[TailReader] = []
        everyone = loop.create_future()

        def factory() -> TailReader:
            reader = TailReader(stats, streams[len(accepted)], lines, True)
            accepted.append(reader)
            if len(accepted) == len(streams):
                everyone.set_result(True)
            return reader

        server = await loop.create_server(factory, "127.0.0.1", 0)
        emit("listening", server.sockets[0].getsockname()[1])
        await asyncio.wait_for(everyone, 60)
        server.close()
        readers = accepted

    if args.role in ("producer", "both"):
        await produce_requests()
        emit("created")
    if args.role in ("reader", "both"):
        if args.target == "raw":
            await raw_listen()
        else:
            await read_requests()
        emit("attached")
    if args.role == "reader":
        # A reader-only worker measures from the moment it attached.
        go_cpu, go_wall = cpu_now(), time.monotonic()
    else:
        if not await commands.await_("go", 600):
            failures.append("no go command")
        go_cpu, go_wall = cpu_now(), time.monotonic()
        for p in producers:
            ok = await asyncio.wait_for(p.established, 30)
            if not ok:
                failures.append(f"producer of stream {p.stream} was never connected to a reader")
        await asyncio.gather(*(produce(p, i, lines, args) for i, p in enumerate(producers)))
        for p in producers:
            p.end()
    deadline = args.duration + 60
    waits = [r.finished for r in readers] + [p.finished for p in producers]
    if waits:
        done, pending = await asyncio.wait(waits, timeout=deadline)
        if pending:
            failures.append(f"{len(pending)} connections did not finish in {deadline:.0f} s")
    end_cpu, end_wall = cpu_now(), time.monotonic()
    for p in producers:
        if args.target == "weft":
            try:
                reply = json.loads(bytes(p.body))
                if reply.get("size") != lines * args.line_bytes or reply.get("state") != "complete":
                    failures.append(f"stream {p.stream} ended with {reply}")
            except ValueError:
                failures.append(f"stream {p.stream}: bad final response {bytes(p.body)[:200]!r}")
        elif args.target == "piping" and b"successfully" not in p.body:
            failures.append(f"piping sender {p.stream}: {bytes(p.body)[-200:]!r}")
    for message in failures:
        stats.error(message)
    for t in [r.transport for r in readers] + [p.transport for p in producers]:
        if t is not None:
            t.close()
    if args.lat_out and args.role != "producer":
        with open(args.lat_out, "wb") as out:
            stats.latency_us.tofile(out)
    return {
        "role": args.role,
        "target": args.target,
        "streams": len(streams),
        "readers": len(readers),
        "lines_per_stream": lines,
        "lines_sent": stats.lines_sent,
        "lines_received": stats.lines_received,
        "lines_expected": len(readers) * lines,
        "bytes_received": stats.bytes_received,
        "errors": stats.errors,
        "error_samples": stats.samples,
        "cpu_s": round(end_cpu - go_cpu, 3),
        "wall_s": round(end_wall - go_wall, 3),
        "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


async def produce(p: TailProducer, index: int, lines: int, args: argparse.Namespace) -> None:
    """One line every interval on an absolute schedule; producers of a worker are
    spread over the interval so the server sees a steady load, not bursts."""
    interval = args.interval_ms / 1000
    phase = ((args.first + index) / args.total) * interval if args.spread else 0.0
    loop = asyncio.get_running_loop()
    start = loop.time() + args.start_delay + phase
    for seq in range(lines):
        delay = start + seq * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if p.transport is None or p.transport.is_closing():
            p.stats.error(f"producer of stream {p.stream}: connection closed at line {seq}")
            return
        p.send_line(seq, args.line_bytes)
