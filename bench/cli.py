"""Scenario ``cli`` (issue 12): bin/stream against ``curl -T -``, wall clock included.

Unlike ``pipe`` (which starts bin/stream's clock once it printed the id), each
run here times a client from its spawn to its exit, start-up included, on the
same 100 MiB (10 MiB in --quick) of 50-byte lines fed through a pipe in 4 KiB
writes; the stored size and SHA-256 must match. Start-up is a whole run with
empty stdin (spawn, create, complete, exit) for each client. Lone lines reuse
pipe's measurement (one 100-byte line every 50 ms, a tailing reader). The two
clients alternate within each run, against one server.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

from bench.context import Context
from bench.pipe import (
    check_stored,
    feed,
    lone_lines_once,
    make_lines,
    start_client,
    stderr_lines,
)
from bench.procs import MB, BenchError
from bench.report import Row, ScenarioResult, at_most, median, ratio_at_least
from bench.servers import Server

CLIENTS = ("bin/stream", "curl")
MIB = 1024 * 1024


def timed_run(ctx: Context, weft: Server, client: str, stream: str, data: bytes) -> float:
    """Seconds from spawn to a clean exit of ``client`` sending ``data``."""
    errors: list[str] = []
    spawned = time.perf_counter()
    proc = start_client(ctx, weft, client, stream)
    lines = stderr_lines(proc)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        feeder = threading.Thread(target=feed, args=(proc.stdin, data, errors), daemon=True)
        feeder.start()
        proc.stdout.read()
        code = proc.wait(600)
        ended = time.perf_counter()
        feeder.join(10)
    finally:
        ctx.procs.stop(proc)
    if code != 0:
        said = []
        while not lines.empty():
            line = lines.get()
            if line:
                said.append(line)
        raise BenchError(f"{client} exited {code}: {' | '.join(said[-3:])}")
    if errors:
        raise BenchError("; ".join(errors))
    return ended - spawned


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("cli")
    started = time.monotonic()
    total = (10 if ctx.quick else 100) * MIB
    total -= total % 50
    runs = ctx.runs_for(3)
    data = make_lines(total)
    sha256 = hashlib.sha256(data).hexdigest()
    weft = ctx.weft("cli")
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    lone: dict[str, list[float]] = {client: [] for client in CLIENTS}
    try:
        for run_no in range(1, runs + 1):
            for client in CLIENTS:
                name = "binstream" if client == "bin/stream" else "curl"
                try:
                    startup = timed_run(ctx, weft, client, f"cli{run_no}-{name}-empty", b"")
                    stream = f"cli{run_no}-{name}"
                    seconds = timed_run(ctx, weft, client, stream, data)
                except BenchError as exc:
                    errors.append(str(exc))
                    continue
                errors += check_stored(weft, stream, len(data), sha256)
                row = {
                    "run": run_no,
                    "client": client,
                    "seconds": round(seconds, 3),
                    "mb_s": round(len(data) / MB / seconds, 1),
                    "startup_s": round(startup, 3),
                }
                rows.append(row)
                print(
                    f"  run {run_no} {client:<10} {row['mb_s']:7.1f} MB/s wall "
                    f"({row['seconds']} s), empty run {row['startup_s']} s",
                    flush=True,
                )
            for client in CLIENTS:
                name = "binstream" if client == "bin/stream" else "curl"
                m, _ = lone_lines_once(ctx, weft, client, f"clilone{run_no}-{name}", 1.0)
                errors += m["errors"]
                if m.get("p50_ms") is not None:
                    lone[client].append(m["p50_ms"])
    finally:
        ctx.stop(weft)

    def med(client: str, key: str) -> float | None:
        return median(row[key] for row in rows if row["client"] == client)

    result.errors = errors
    result.data = {"bytes": len(data), "runs": runs, "throughput": rows, "lone_p50_ms": lone}
    result.rows = [
        Row(
            "cli",
            f"bin/stream MB/s, {round(total / MIB)} MiB of 50 B lines, spawn to exit",
            med("bin/stream", "mb_s"),
            [("curl -T -", med("curl", "mb_s"))],
            "≥ 0.8 × curl",
            ratio_at_least(0.8),
        ),
        Row(
            "cli",
            "start-up s (empty stdin, spawn to exit)",
            med("bin/stream", "startup_s"),
            [("curl -T -", med("curl", "startup_s"))],
            "≤ 0.3 s",
            at_most(0.3),
            digits=3,
        ),
        Row(
            "cli",
            "lone line p50 ms (median of runs)",
            median(lone["bin/stream"]),
            [("curl -T -", median(lone["curl"]))],
            "≤ 1 ms",
            at_most(1.0),
            digits=2,
        ),
    ]
    result.seconds = round(time.monotonic() - started, 1)
    return result
