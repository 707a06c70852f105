"""``post``/``read``: one large stream in or out over a blocking socket (scenario 5);
``sink``/``source``: the loopback TCP ceiling (scenario 1)."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from typing import Any

from bench.loadgen.common import MIB, Commands, ResponseParser, cpu_now, emit, pattern_block


def run_post(args: argparse.Namespace) -> dict[str, Any]:
    commands = Commands()
    block = memoryview(pattern_block(args.seed))
    sock = socket.create_connection((args.host, args.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    framing = "Transfer-Encoding: chunked" if args.chunked else f"Content-Length: {args.size}"
    sock.sendall(
        f"POST /stream/{args.id} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        f"{framing}\r\n\r\n".encode()
    )
    body = bytearray()
    parser = ResponseParser(body.extend)
    sock.settimeout(60)
    while not parser.head_done:  # Weft answers 201 before it reads the body
        data = sock.recv(4096)
        if not data:
            raise SystemExit("post: connection closed before the response head")
        parser.feed(data)
    emit("created", parser.status)
    if args.wait_go:
        commands.wait("go")
    raw = bytes(block)
    whole = memoryview(b"%x\r\n%b\r\n" % (len(raw), raw)) if args.chunked else block
    started_cpu, started = cpu_now(), time.perf_counter()
    sock.settimeout(None)
    left = args.size
    while left:
        if left >= len(block):
            sock.sendall(whole)
            left -= len(block)
        else:
            piece = raw[:left]
            sock.sendall(b"%x\r\n%b\r\n" % (left, piece) if args.chunked else piece)
            left = 0
    seconds = time.perf_counter() - started
    emit("written", round(seconds, 4))
    if args.chunked:
        if args.hold:
            commands.wait("finish")
        sock.sendall(b"0\r\n\r\n")
    sock.settimeout(600)
    while not parser.done:
        data = sock.recv(65536)
        if not data:
            parser.connection_lost()
            break
        parser.feed(data)
    total_seconds = time.perf_counter() - started
    sock.close()
    try:
        reply = json.loads(bytes(body))
    except ValueError:
        reply = {"raw": bytes(body)[:300].decode(errors="replace")}
    return {
        "status": parser.status,
        "reply": reply,
        "sent": args.size,
        "write_seconds": round(seconds, 4),
        "seconds": round(total_seconds, 4),
        "cpu_s": round(cpu_now() - started_cpu, 3),
    }


def run_read(args: argparse.Namespace) -> dict[str, Any]:
    commands = Commands()
    sock = socket.socket()
    if args.rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    sock.connect((args.host, args.port))
    sock.sendall(
        f"GET /stream/{args.id} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n\r\n".encode()
    )
    count = 0

    def body(data: bytes) -> None:
        nonlocal count
        count += len(data)

    parser = ResponseParser(body)
    while not parser.head_done:
        data = sock.recv(4096)
        if not data:
            break
        parser.feed(data)
    emit("attached", parser.status)
    if args.stall:
        commands.wait("resume")
    emit("resumed")
    started = time.perf_counter()
    buffer = bytearray(MIB)
    view = memoryview(buffer)
    sock.settimeout(600)
    while not parser.done:
        got = sock.recv_into(view)
        if not got:
            parser.connection_lost()
            break
        parser.feed(bytes(view[:got]))
    sock.close()
    return {
        "status": parser.status,
        "bytes": count,
        "complete": parser.done,
        "seconds": round(time.perf_counter() - started, 4),
        "state": parser.headers.get("x-stream-state"),
    }


# -- sink / source: the loopback TCP ceiling --------------------------------------------


def run_sink(args: argparse.Namespace) -> dict[str, Any]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    emit("listening", listener.getsockname()[1])
    conn, _ = listener.accept()
    buffer = bytearray(MIB)
    total = 0
    started = time.perf_counter()
    while got := conn.recv_into(buffer):
        total += got
    seconds = time.perf_counter() - started
    conn.close()
    return {"bytes": total, "seconds": round(seconds, 4)}


def run_source(args: argparse.Namespace) -> dict[str, Any]:
    block = memoryview(pattern_block(args.seed))
    sock = socket.create_connection((args.host, args.port))
    started = time.perf_counter()
    left = args.size
    while left:
        piece = block[: min(len(block), left)]
        sock.sendall(piece)
        left -= len(piece)
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)
    sock.close()
    return {"bytes": args.size, "seconds": round(time.perf_counter() - started, 4)}


# -- many: concurrent live streams (the s3 scenario) ----------------------------------------


class _Live:
    """What the streams of ``many`` share: the bytes, how many are written, the end."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.raw = pattern_block(args.seed)
        self.chunk = b"%x\r\n%b\r\n" % (len(self.raw), self.raw)
        self.written = 0
        self.all_written = asyncio.Event()
        self.finish = asyncio.Event()


async def _one_live(live: _Live, number: int) -> dict[str, Any]:
    """A chunked POST of --size bytes that stays live until ``finish``."""
    args = live.args
    reader, writer = await asyncio.open_connection(args.host, args.port)
    stream = f"{args.prefix}{number}"
    writer.write(
        f"POST /stream/{stream} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    body = bytearray()
    parser = ResponseParser(body.extend)
    while not parser.head_done:  # Weft answers 201 before it reads the body
        data = await reader.read(4096)
        if not data:
            raise SystemExit(f"many: {stream} closed before the response head")
        parser.feed(data)
    left = args.size
    while left:
        take = min(left, MIB)
        writer.write(live.chunk if take == MIB else b"%x\r\n%b\r\n" % (take, live.raw[:take]))
        await writer.drain()
        left -= take
    live.written += 1
    if live.written == args.streams:
        live.all_written.set()
    await live.finish.wait()
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    while not parser.done:
        data = await reader.read(65536)
        if not data:
            parser.connection_lost()
            break
        parser.feed(data)
    writer.close()
    try:
        reply = json.loads(bytes(body))
    except ValueError:
        reply = {"raw": bytes(body)[:300].decode(errors="replace")}
    return {"stream": stream, "status": parser.status, "reply": reply}


async def _many(args: argparse.Namespace) -> dict[str, Any]:
    commands = Commands()
    live = _Live(args)
    started = time.perf_counter()
    tasks = [asyncio.create_task(_one_live(live, n)) for n in range(args.streams)]
    everything = asyncio.gather(*tasks)
    await asyncio.wait(
        [everything, asyncio.ensure_future(live.all_written.wait())],
        return_when=asyncio.FIRST_COMPLETED,
    )
    if everything.done():  # a stream failed before all were written
        everything.result()
    emit("written", round(time.perf_counter() - started, 3))
    await commands.await_("finish")
    live.finish.set()
    results = await everything
    return {"streams": results, "seconds": round(time.perf_counter() - started, 3)}


def run_many(args: argparse.Namespace) -> dict[str, Any]:
    """``many``: --streams chunked POSTs of --size bytes each at once, in 1 MiB chunks;
    ``written`` once every byte is sent, the streams live until ``finish``."""
    try:
        import uvloop

        return uvloop.run(_many(args))
    except ImportError:
        return asyncio.run(_many(args))
