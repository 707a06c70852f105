"""A cold replay next to live tailers (issue 9): are the tailers held up?

Two Weft servers run side by side, each holding one finished stream of
``--size`` MiB: the real one, which reads segments that are not in the page
cache in a thread, and the same code with every read on the event loop (the
old path; started through this module's ``--serve-onloop``). Per run, for each
server in alternating order: 50 live streams, each with one reader, get a
100-byte line every 10 ms for ``--duration`` seconds (bench/loadgen, as in the
latency scenario), while the big stream is replayed over and over with curl,
its segment files dropped from the page cache before each replay
(``posix_fadvise(POSIX_FADV_DONTNEED)``, no root needed). The tailers' latency
(producer's write to reader's receipt) is compared with the same tailers and
no replay on the real server (the reference), measured in the same run.

Run: .venv/bin/python bench/coldreplay.py [--size MIB] [--runs N] [--duration S]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `app` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.context import Context
from bench.procs import MB, MIB, Procs, cpu_seconds, curl
from bench.report import load_latencies, percentiles
from bench.servers import Server, start_weft
from bench.throughput import make_source

STREAMS = 50
INTERVAL_MS = 10


def serve_onloop(argv: list[str]) -> int:
    """``python -m app`` with every segment read on the event loop: the old path."""
    from app.__main__ import main
    from app.storage.segments import LocalSegmentStore

    LocalSegmentStore.offload_cold_reads = False
    return main(argv)


def drop_cache(directory: Path) -> None:
    for path in directory.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class Replays(threading.Thread):
    """Cold replays of one stream, back to back, until stopped."""

    def __init__(self, url: str, segments: Path, size: int) -> None:
        super().__init__(daemon=True)
        self.url, self.segments, self.size = url, segments, size
        self.stopping = threading.Event()
        self.speeds: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            drop_cache(self.segments)
            status, seconds, _, received, _ = curl(["-o", "/dev/null", self.url])
            if status != 200 or received != self.size:
                self.errors.append(f"replay answered {status} with {received} bytes")
                return
            self.speeds.append(self.size / MB / seconds)


def tail(
    ctx: Context, server: Server, tag: str, duration: float, replays: Replays | None
) -> dict[str, Any]:
    common = ["tail", "--target", "weft", "--prefix", f"{tag}-", "--duration", str(duration)]
    common += ["--interval-ms", str(INTERVAL_MS), "--streams", str(STREAMS), "--readers", "1"]
    common += ["--port", str(server.port)]
    lat_file = ctx.work / f"{tag}.lat"
    producer = reader = None
    try:
        producer = ctx.worker(f"{tag}-producers", common + ["--role", "producer"])
        producer.expect("created", 30)
        reader = ctx.worker(
            f"{tag}-readers", common + ["--role", "reader", "--lat-out", str(lat_file)]
        )
        reader.expect("attached", 60)
        if replays is not None:
            replays.start()
            time.sleep(0.5)  # let the first replay get going before the lines start
        cpu = cpu_seconds(server.pid)
        producer.send("go")
        sent = producer.result(duration + 120)
        received = reader.result(duration + 120)
        cpu = cpu_seconds(server.pid) - cpu
    finally:
        if replays is not None:
            replays.stopping.set()
            replays.join(120)
        ctx.stop(producer, reader)
    errors = sent["error_samples"] + received["error_samples"] + (replays.errors if replays else [])
    if received["lines_received"] != received["lines_expected"]:
        errors.append(f"{received['lines_received']}/{received['lines_expected']} lines")
    figures = percentiles(load_latencies([lat_file]))
    lat_file.unlink(missing_ok=True)
    speeds = replays.speeds if replays else []
    return {
        **figures,
        "server_cpu_s": round(cpu, 2),
        "replays": len(speeds),
        "replay_mb_s": statistics.median(speeds) if speeds else None,
        "errors": errors,
    }


def big_stream(server: Server, source: Path, size: int) -> tuple[str, Path]:
    url = f"{server.url}/stream/big"
    status, *_ = curl(["-X", "POST", "-T", str(source), url])
    if status != 201:
        raise SystemExit(f"{server.label}: the big stream's POST answered {status}")
    root = server.log_path.parent / "data" / "segments"
    (segments,) = [d for d in root.iterdir() if sum(p.stat().st_size for p in d.iterdir()) >= size]
    return url, segments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB in the big stream (1024)")
    parser.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of tailing (10)")
    parser.add_argument("--tmp", help="parent of the temporary directory")
    args = parser.parse_args()
    size = args.size * MIB
    procs = Procs()
    results: dict[str, list[dict[str, Any]]] = {"alone": [], "on loop": [], "off loop": []}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        ctx = Context(work=Path(tmp), procs=procs, quick=False, runs=args.runs)
        source = Path(tmp) / "source"
        make_source(source, size)
        fixed = start_weft(procs, ctx.directory("fixed") / "weft", label="off loop")
        old = start_weft(
            procs,
            ctx.directory("old") / "weft",
            label="on loop",
            module=["bench.coldreplay", "--serve-onloop"],
        )
        try:
            streams = {server.label: big_stream(server, source, size) for server in (fixed, old)}
            source.unlink()
            for run in range(args.runs):
                plan: list[tuple[str, Server, bool]] = [("alone", fixed, False)]
                pair = [("off loop", fixed, True), ("on loop", old, True)]
                plan += pair if run % 2 == 0 else pair[::-1]
                for name, server, replay in plan:
                    url, segments = streams[server.label]
                    replays = Replays(url, segments, size) if replay else None
                    tag = f"r{run}-{name.replace(' ', '')}"
                    m = tail(ctx, server, tag, args.duration, replays)
                    results[name].append(m)
                    print(
                        f"  run {run + 1} {name:<9} p50 {m['p50_ms']} ms  p99 {m['p99_ms']} ms  "
                        f"max {m['max_ms']} ms  replays {m['replays']} at "
                        f"{m['replay_mb_s'] or 0:.0f} MB/s  server CPU {m['server_cpu_s']} s"
                        + (f"  !! {'; '.join(m['errors'][:3])}" if m["errors"] else ""),
                        flush=True,
                    )
        finally:
            procs.stop_all()
    print(
        f"\n{STREAMS} tailers, a line every {INTERVAL_MS} ms, {args.duration:g} s; "
        f"cold replays of {args.size} MiB; median of {args.runs} runs"
    )
    print(f"{'':<30}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'p99 ratio':>11}{'replay MB/s':>13}")
    reference = statistics.median(m["p99_ms"] for m in results["alone"])
    for name, label in [
        ("alone", "tailers alone (reference)"),
        ("on loop", "cold replay, reads on loop"),
        ("off loop", "cold replay, reads off loop"),
    ]:
        runs = results[name]
        p99 = statistics.median(m["p99_ms"] for m in runs)
        speeds = [m["replay_mb_s"] for m in runs if m["replay_mb_s"]]
        print(
            f"{label:<30}{statistics.median(m['p50_ms'] for m in runs):>9.2f}{p99:>9.2f}"
            f"{statistics.median(m['max_ms'] for m in runs):>9.1f}{p99 / reference:>11.2f}"
            + (f"{statistics.median(speeds):>13.0f}" if speeds else f"{'-':>13}")
        )
    before = statistics.median(m["p99_ms"] for m in results["on loop"])
    after = statistics.median(m["p99_ms"] for m in results["off loop"])
    print(f"p99 off loop / on loop: {after / before:.2f}")
    errors = [e for runs in results.values() for m in runs for e in m["errors"]]
    if errors:
        print("errors: " + "; ".join(errors[:5]))
        sys.exit(1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-onloop"]:
        sys.exit(serve_onloop(sys.argv[2:]))
    main()
