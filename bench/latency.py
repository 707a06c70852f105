"""Scenarios 3 and 4: write → read latency of live streams.

Producers and readers run in bench/loadgen processes, never in the server's.
A producer writes one 100-byte line per interval into a chunked POST, each line
starting with the producer's perf_counter_ns() (CLOCK_MONOTONIC) taken just before
the write; a reader timestamps the bytes when its socket hands them over and
records the difference for every line. Latency therefore includes the load
generator's own scheduling delay, which its CPU figure lets a reader judge.

3 (tail): one stream, 100-byte lines every 10 ms for 10 s, with 1 reader and
with 100 readers; references in the same run: piping-server 1 sender → 1
receiver, and raw TCP (the producer writes straight into the reader's socket:
the floor of this measurement).

4 (breadth): 1,000 live streams, each with one reader, each producer writing a
line every 100 ms for 30 s; two load-generator processes share the streams,
their producers spread evenly over the interval.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.procs import BenchError, RssSampler, cpu_seconds, memory_kb
from bench.report import (
    Row,
    ScenarioResult,
    at_most,
    load_latencies,
    median,
    percentiles,
)
from bench.servers import Server


def tail_once(
    ctx: Context,
    server: Server | None,
    target: str,
    *,
    readers: int,
    duration: float,
    interval_ms: float,
    tag: str,
    directory: Path,
    read_from: Server | None = None,
) -> dict[str, Any]:
    """One producer, ``readers`` readers of its stream, in two worker processes;
    read_from: the readers' server (another node of a cluster), else ``server``."""
    common = ["tail", "--target", target, "--prefix", f"{tag}-", "--duration", str(duration)]
    common += ["--interval-ms", str(interval_ms), "--readers", str(readers)]
    lat_file = directory / f"{tag}.lat"
    reader_args = common + ["--role", "reader", "--lat-out", str(lat_file)]
    producer = reader = None
    try:
        if target == "raw":
            reader = ctx.worker(f"{tag}-readers", reader_args)
            port = reader.expect("listening", 30)
            producer = ctx.worker(
                f"{tag}-producer", common + ["--role", "producer", "--port", port]
            )
            producer.expect("created", 30)
            reader.expect("attached", 30)
        else:
            assert server is not None
            port = str(server.port)
            producer = ctx.worker(
                f"{tag}-producer", common + ["--role", "producer", "--port", port]
            )
            producer.expect("created", 30)
            read_port = str((read_from or server).port)
            reader = ctx.worker(f"{tag}-readers", reader_args + ["--port", read_port])
            reader.expect("attached", 60)
        pids = {s.pid for s in (server, read_from) if s is not None}
        cpu_before = sum(cpu_seconds(pid) for pid in pids)
        producer.send("go")
        sent = producer.result(duration + 120)
        received = reader.result(duration + 120)
        cpu_after = sum(cpu_seconds(pid) for pid in pids)
    finally:
        ctx.stop(producer, reader)
    errors = sent["error_samples"] + received["error_samples"]
    if received["lines_received"] != received["lines_expected"]:
        errors.append(
            f"{tag}: {received['lines_received']} lines read, {received['lines_expected']} expected"
        )
    figures = percentiles(load_latencies([lat_file]))
    lat_file.unlink(missing_ok=True)
    return {
        "system": target,
        "readers": readers,
        **figures,
        "lines_sent": sent["lines_sent"],
        "lines_received": received["lines_received"],
        "lines_expected": received["lines_expected"],
        "error_count": sent["errors"] + received["errors"],
        "errors": errors,
        "server_cpu_s": round(cpu_after - cpu_before, 2) if server else None,
        "loadgen_cpu_s": round(sent["cpu_s"] + received["cpu_s"], 2),
        "wall_s": sent["wall_s"],
    }


def run_tail(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("latency")
    started = time.monotonic()
    runs = ctx.runs_for(3)
    duration = 2.0 if ctx.quick else 10.0
    many = 100
    directory = ctx.directory("latency")
    weft = ctx.weft("latency")
    piping = ctx.piping()
    if piping is None:
        result.notes.append("piping-server unavailable: its reference is missing")
    measured: list[dict[str, Any]] = []
    try:
        for run_no in range(1, runs + 1):
            plan: list[tuple[str, Server | None, str, int]] = [("weft", weft, "weft", 1)]
            if piping is not None:
                plan.append(("piping", piping, "piping", 1))
            plan += [("raw", None, "raw", 1), ("weft", weft, "weft", many)]
            if piping is not None:
                plan.append(("piping", piping, "piping", many))
            for name, server, target, readers in plan:
                m = tail_once(
                    ctx,
                    server,
                    target,
                    readers=readers,
                    duration=duration,
                    interval_ms=10,
                    tag=f"lat{run_no}-{name}-{readers}",
                    directory=directory,
                )
                m["run"] = run_no
                measured.append(m)
                print(
                    f"  run {run_no} {name:<6} {readers:>3} reader(s): p50 {m['p50_ms']} ms  "
                    f"p99 {m['p99_ms']} ms  max {m['max_ms']} ms  "
                    f"({m['lines_received']}/{m['lines_expected']} lines, "
                    f"server CPU {m['server_cpu_s']} s, loadgen CPU {m['loadgen_cpu_s']} s)"
                    + (f"  !! {'; '.join(m['errors'][:3])}" if m["errors"] else ""),
                    flush=True,
                )
    finally:
        ctx.stop(weft, piping)

    def pick(system: str, readers: int, key: str, how: str = "median") -> float | None:
        values = [m[key] for m in measured if m["system"] == system and m["readers"] == readers]
        if how == "max":
            return max((v for v in values if v is not None), default=None)
        return median(values)

    result.errors = [e for m in measured for e in m["errors"]]
    result.data = {"duration_s": duration, "interval_ms": 10, "runs": runs, "results": measured}

    def refs(readers: int, key: str, how: str = "median") -> list[tuple[str, float | None]]:
        """piping 1→1 first (the ratio's reference), piping 1→N, then the raw floor."""
        found = []
        if piping is not None:
            found.append(("piping 1→1", pick("piping", 1, key, how)))
            if readers > 1:
                found.append((f"piping 1→{readers}", pick("piping", readers, key, how)))
        return found + [("raw TCP", pick("raw", 1, key, how))]

    for readers, limit in ((1, 2.0), (many, 10.0)):
        label = f"{readers} reader{'s' if readers > 1 else ''}"
        result.rows += [
            Row(
                "latency",
                f"{label}: p50 ms",
                pick("weft", readers, "p50_ms"),
                refs(readers, "p50_ms"),
                digits=2,
            ),
            Row(
                "latency",
                f"{label}: p99 ms",
                pick("weft", readers, "p99_ms"),
                refs(readers, "p99_ms"),
                f"≤ {limit:g} ms",
                at_most(limit),
                digits=2,
            ),
            Row(
                "latency",
                f"{label}: max ms",
                pick("weft", readers, "max_ms", "max"),
                refs(readers, "max_ms", "max"),
                digits=2,
            ),
        ]
    result.rows.append(
        Row(
            "latency",
            f"CPU s, {many} readers: server",
            pick("weft", many, "server_cpu_s"),
            [("loadgen", pick("weft", many, "loadgen_cpu_s"))],
            digits=2,
            compare=False,
        )
    )
    result.seconds = round(time.monotonic() - started, 1)
    return result


def run_breadth(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("breadth")
    started = time.monotonic()
    streams = 100 if ctx.quick else 1000
    duration = 5.0 if ctx.quick else 30.0
    interval_ms = 100.0
    workers_n = 2
    runs = ctx.runs_for(1)
    directory = ctx.directory("breadth")
    measured: list[dict[str, Any]] = []
    for run_no in range(1, runs + 1):
        weft = ctx.weft("breadth")
        sampler = RssSampler(weft.pid, 0.1)
        workers = []
        lat_files = [directory / f"run{run_no}-w{k}.lat" for k in range(workers_n)]
        try:
            setup_started = time.monotonic()
            share = streams // workers_n
            for k in range(workers_n):
                count = share if k < workers_n - 1 else streams - share * (workers_n - 1)
                args = ["tail", "--target", "weft", "--role", "both", "--port", str(weft.port)]
                args += ["--prefix", f"br{run_no}-", "--first", str(k * share)]
                args += ["--streams", str(count), "--total", str(streams), "--spread"]
                args += ["--interval-ms", str(interval_ms), "--duration", str(duration)]
                args += ["--start-delay", "0.5", "--concurrency", "50"]
                args += ["--lat-out", str(lat_files[k])]
                workers.append(ctx.worker(f"breadth{run_no}-w{k}", args))
            for w in workers:
                w.expect("attached", 300)
            setup_s = time.monotonic() - setup_started
            rss_before = sampler.now_kb()
            cpu_before = cpu_seconds(weft.pid)
            go = time.monotonic()
            for w in workers:
                w.send("go")
            outcomes = [w.result(duration + 180) for w in workers]
            wall = time.monotonic() - go
            cpu_after = cpu_seconds(weft.pid)
            memory = memory_kb(weft.pid)
            if not weft.alive():
                raise BenchError("Weft exited during the breadth run")
        finally:
            sampler.stop()
            ctx.stop(*workers, weft)
        figures = percentiles(load_latencies(lat_files))
        for path in lat_files:
            path.unlink(missing_ok=True)
        errors = [e for o in outcomes for e in o["error_samples"]]
        error_count = sum(o["errors"] for o in outcomes)
        received = sum(o["lines_received"] for o in outcomes)
        expected = sum(o["lines_expected"] for o in outcomes)
        if received != expected:
            errors.append(f"breadth: {received} lines read, {expected} expected")
            error_count += 1
        m = {
            "run": run_no,
            "streams": streams,
            "setup_s": round(setup_s, 2),
            **figures,
            "lines_received": received,
            "lines_expected": expected,
            "error_count": error_count,
            "errors": errors,
            "peak_rss_mb": round(memory.get("VmHWM", 0) / 1024, 1),
            "sampled_peak_rss_mb": round(sampler.peak_kb(0) / 1024, 1),
            "rss_before_go_mb": round(rss_before / 1024, 1),
            "server_cpu_pct": round(100 * (cpu_after - cpu_before) / wall, 1),
            "loadgen_cpu_pct": round(100 * sum(o["cpu_s"] for o in outcomes) / wall, 1),
            "fd_limit_loadgen": min(o["fd_limit"] for o in outcomes),
        }
        measured.append(m)
        print(
            f"  run {run_no} {streams} streams: setup {m['setup_s']} s, p50 {m['p50_ms']} ms  "
            f"p99 {m['p99_ms']} ms  max {m['max_ms']} ms  errors {error_count}  "
            f"peak RSS {m['peak_rss_mb']} MB  CPU server {m['server_cpu_pct']}% "
            f"loadgen {m['loadgen_cpu_pct']}%"
            + (f"  !! {'; '.join(errors[:3])}" if errors else ""),
            flush=True,
        )
    result.errors = [e for m in measured for e in m["errors"]]
    result.data = {
        "streams": streams,
        "duration_s": duration,
        "interval_ms": interval_ms,
        "workers": workers_n,
        "runs": runs,
        "results": measured,
    }

    def med(key: str) -> float | None:
        return median(m[key] for m in measured)

    n = f"{streams} streams"
    result.rows = [
        Row(
            "breadth",
            f"{n}: errors",
            float(sum(m["error_count"] for m in measured)),
            [],
            "0",
            at_most(0),
            digits=0,
        ),
        Row("breadth", f"{n}: p50 ms", med("p50_ms"), digits=2),
        Row("breadth", f"{n}: p99 ms", med("p99_ms"), [], "≤ 50 ms", at_most(50), digits=2),
        Row("breadth", f"{n}: max ms", max(m["max_ms"] or 0 for m in measured), digits=2),
        Row(
            "breadth",
            f"{n}: peak server RSS MB",
            max(m["peak_rss_mb"] for m in measured),
            [],
            "≤ 300 MB",
            at_most(300),
        ),
        Row(
            "breadth",
            "CPU % of a core: server",
            med("server_cpu_pct"),
            [("loadgen (2 procs)", med("loadgen_cpu_pct"))],
            compare=False,
        ),
        Row("breadth", "setup s (connect all)", med("setup_s"), digits=1),
    ]
    result.seconds = round(time.monotonic() - started, 1)
    return result
