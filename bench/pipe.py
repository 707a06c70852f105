"""Scenario 6: bin/stream, the pipe client, fed many small lines as fast as it reads.

Throughput: 100 MB (10 MB in --quick) of 50-byte lines go into bin/stream's
stdin through a pipe, written in 4 KiB blocks (what a block-buffered program
writes into a pipe), as fast as bin/stream takes them. The clock starts when
bin/stream has printed the stream id (its Python start-up and the POST are
reported apart, as start-up s) and stops when it exits; it must exit 0 and the
stored size and SHA-256 must match. The reference is curl reading the same pipe
(`curl -X POST -T - URL`, chunked), timed from its start.

Lone lines: then one 100-byte line every 50 ms for 2 s goes into a fresh
bin/stream (and into curl -T -), with a tailing reader in a load-generator
process measuring write → read latency: coalescing small reads must not hold a
lone line back.
"""

from __future__ import annotations

import hashlib
import os
import queue
import resource
import subprocess
import threading
import time
from array import array
from typing import IO, Any

from bench.context import Context
from bench.loadgen.common import make_line
from bench.procs import MB, REPO, BenchError, http_json, python_for_servers
from bench.report import Row, ScenarioResult, at_least, at_most, load_latencies, median, percentiles
from bench.servers import Server

FEED_WRITE = 4096
LINE = 50
LONE_INTERVAL = 0.05


def make_lines(total: int) -> bytes:
    """``total`` bytes of numbered 50-byte lines."""
    count = total // LINE
    block_lines = 20_000
    filler = b"y" * (LINE - 12) + b"\n"
    block = b"".join(b"%010d " % i + filler for i in range(block_lines))
    out = bytearray()
    for start in range(0, count, block_lines):
        n = min(block_lines, count - start)
        out += block[: n * LINE]
    return bytes(out)


def feed(stdin: IO[bytes], data: bytes, errors: list[str]) -> None:
    view = memoryview(data)
    fd = stdin.fileno()
    try:
        pos = 0
        while pos < len(view):
            pos += os.write(fd, view[pos : pos + FEED_WRITE])
    except OSError as exc:
        errors.append(f"feeding stdin failed after {pos} bytes: {exc}")
    finally:
        stdin.close()


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stderr_lines(proc: subprocess.Popen[bytes]) -> queue.Queue[str | None]:
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line.decode(errors="replace").rstrip("\n"))
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    return lines


def start_client(ctx: Context, weft: Server, client: str, stream: str) -> subprocess.Popen[bytes]:
    if client == "bin/stream":
        argv = [python_for_servers(), str(REPO / "bin" / "stream"), weft.url, stream]
    else:
        argv = ["curl", "-sS", "-X", "POST", "-T", "-", f"{weft.url}/stream/{stream}"]
    return ctx.procs.spawn(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def wait_ready(client: str, lines: queue.Queue[str | None], stream: str) -> None:
    """bin/stream prints the stream id to stderr once the server answered."""
    if client != "bin/stream":
        return
    line = lines.get(timeout=60)
    if line != stream:
        raise BenchError(f"bin/stream printed {line!r} instead of the stream id {stream}")


def check_stored(weft: Server, stream: str, size: int, sha256: str) -> list[str]:
    status, info = http_json("GET", f"{weft.url}/streams/{stream}")
    if status != 200 or info.get("size") != size or info.get("sha256") != sha256:
        return [f"{stream}: stored {info}, expected {size} bytes sha256 {sha256}"]
    if info.get("state") != "complete":
        return [f"{stream}: state {info.get('state')}, expected complete"]
    return []


def throughput_once(
    ctx: Context, weft: Server, client: str, stream: str, data: bytes, sha256: str
) -> dict[str, Any]:
    errors: list[str] = []
    cpu_before = child_cpu()
    spawned = time.perf_counter()
    proc = start_client(ctx, weft, client, stream)
    lines = stderr_lines(proc)
    try:
        wait_ready(client, lines, stream)
        started = time.perf_counter()
        assert proc.stdin is not None
        feeder = threading.Thread(target=feed, args=(proc.stdin, data, errors), daemon=True)
        feeder.start()
        assert proc.stdout is not None
        proc.stdout.read()
        code = proc.wait(600)
        ended = time.perf_counter()
        feeder.join(10)
    finally:
        ctx.procs.stop(proc)
    cpu = child_cpu() - cpu_before
    if code != 0:
        messages: list[str] = []
        while not lines.empty():
            line = lines.get()
            if line:
                messages.append(line)
        errors.append(f"{client} exited {code}: {' | '.join(messages[-3:])}")
    errors += check_stored(weft, stream, len(data), sha256)
    return {
        "client": client,
        "stream": stream,
        "mb_s": round(len(data) / MB / (ended - started), 1),
        "startup_s": round(started - spawned, 3),
        "client_cpu_s": round(cpu, 2),
        "errors": errors,
    }


def lone_lines_once(
    ctx: Context, weft: Server, client: str, tag: str, duration: float
) -> tuple[dict[str, Any], array[int]]:
    """One line every 50 ms through ``client``, read by a tailing loadgen reader."""
    directory = ctx.directory(tag)
    lat_file = directory / "lone.lat"
    prefix = f"{tag}-"
    stream = f"{prefix}{0:06d}"
    count = round(duration / LONE_INTERVAL)
    errors: list[str] = []
    proc = start_client(ctx, weft, client, stream)
    lines = stderr_lines(proc)
    reader = None
    try:
        if client == "bin/stream":
            wait_ready(client, lines, stream)
        else:  # curl: the stream exists once the server answered the POST's head
            deadline = time.monotonic() + 30
            while http_json("GET", f"{weft.url}/streams/{stream}")[0] != 200:
                if time.monotonic() > deadline:
                    raise BenchError(f"curl -T - did not create {stream}")
                time.sleep(0.02)
        reader = ctx.worker(
            f"{tag}-reader",
            ["tail", "--target", "weft", "--role", "reader", "--port", str(weft.port)]
            + ["--prefix", prefix, "--duration", str(duration)]
            + ["--interval-ms", str(LONE_INTERVAL * 1000), "--lat-out", str(lat_file)],
        )
        reader.expect("attached", 30)
        assert proc.stdin is not None
        fd = proc.stdin.fileno()
        start = time.monotonic() + 0.1
        for seq in range(count):
            delay = start + seq * LONE_INTERVAL - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            os.write(fd, make_line(time.perf_counter_ns(), seq, 0, 100))
        proc.stdin.close()
        got = reader.result(60)
        code = proc.wait(60)
    finally:
        ctx.stop(reader)
        ctx.procs.stop(proc)
    if code != 0:
        errors.append(f"{client} exited {code}")
    errors += got["error_samples"]
    samples = load_latencies([lat_file])
    return {"client": client, "lines": count, **percentiles(samples), "errors": errors}, samples


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("pipe")
    started = time.monotonic()
    total = 10_000_000 if ctx.quick else 100_000_000
    lone_duration = 1.0 if ctx.quick else 2.0
    runs = ctx.runs_for(3)
    data = make_lines(total)
    sha256 = hashlib.sha256(data).hexdigest()
    weft = ctx.weft("pipe")
    measured: list[dict[str, Any]] = []
    lone: list[dict[str, Any]] = []
    lone_samples: dict[str, array[int]] = {"bin/stream": array("q"), "curl": array("q")}
    try:
        for run_no in range(1, runs + 1):
            for client in ("bin/stream", "curl"):
                name = "binstream" if client == "bin/stream" else "curl"
                m = throughput_once(ctx, weft, client, f"pipe{run_no}-{name}", data, sha256)
                m["run"] = run_no
                measured.append(m)
                print(
                    f"  run {run_no} {client:<10} {m['mb_s']:7.1f} MB/s  "
                    f"(start-up {m['startup_s']} s, client CPU {m['client_cpu_s']} s)"
                    + (f"  !! {'; '.join(m['errors'])}" if m["errors"] else ""),
                    flush=True,
                )
            for client in ("bin/stream", "curl"):
                name = "binstream" if client == "bin/stream" else "curl"
                m, samples = lone_lines_once(
                    ctx, weft, client, f"lone{run_no}-{name}", lone_duration
                )
                m["run"] = run_no
                lone_samples[client].extend(samples)
                lone.append(m)
                print(
                    f"  run {run_no} {client:<10} lone lines: p50 {m['p50_ms']} ms  "
                    f"max {m['max_ms']} ms"
                    + (f"  !! {'; '.join(m['errors'][:3])}" if m["errors"] else ""),
                    flush=True,
                )
    finally:
        ctx.stop(weft)
    result.errors = [e for m in measured + lone for e in m["errors"]]
    lone_bin = percentiles(lone_samples["bin/stream"])
    lone_curl = percentiles(lone_samples["curl"])
    result.data = {
        "bytes": total,
        "line_bytes": LINE,
        "feed_write_bytes": FEED_WRITE,
        "runs": runs,
        "throughput": measured,
        "lone_lines": lone,
        "lone_lines_all_runs": {"bin/stream": lone_bin, "curl": lone_curl},
    }

    def med(rows: list[dict[str, Any]], client: str, key: str) -> float | None:
        return median(m[key] for m in rows if m["client"] == client)

    mb = f"{total // MB} MB"
    result.rows = [
        Row(
            "pipe",
            f"bin/stream MB/s, {mb} of 50 B lines",
            med(measured, "bin/stream", "mb_s"),
            [("curl -T -", med(measured, "curl", "mb_s"))],
            "≥ 100 MB/s",
            at_least(100),
        ),
        Row(
            "pipe",
            "client CPU s",
            med(measured, "bin/stream", "client_cpu_s"),
            [("curl -T -", med(measured, "curl", "client_cpu_s"))],
            digits=2,
        ),
        Row(
            "pipe",
            "bin/stream start-up s (not timed)",
            med(measured, "bin/stream", "startup_s"),
            digits=2,
        ),
        Row(
            "pipe",
            "lone line p50 ms (all runs)",
            lone_bin["p50_ms"],
            [("curl -T -", lone_curl["p50_ms"])],
            digits=2,
        ),
        Row(
            "pipe",
            "lone line p99 ms (all runs)",
            lone_bin["p99_ms"],
            [("curl -T -", lone_curl["p99_ms"])],
            "≤ 5 ms (a few)",
            at_most(5),
            digits=2,
        ),
        Row(
            "pipe",
            "lone line max ms",
            lone_bin["max_ms"],
            [("curl -T -", lone_curl["max_ms"])],
            digits=2,
        ),
    ]
    result.seconds = round(time.monotonic() - started, 1)
    return result
