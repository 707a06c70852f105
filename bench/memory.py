"""Scenario 5: server memory does not grow with stream size or with a stalled reader.

Size: a fresh Weft ingests a 10 MiB stream and replays it with curl, then a
4 GiB stream (256 MiB in --quick) and replays it. The bytes come from a
load-generator process (a 1 MiB random block repeated, Content-Length framing),
so no source file is needed. Growth is the server's VmHWM (peak RSS since start)
after the large stream minus its VmHWM after the small one.

Stall: on another fresh Weft, a producer opens a chunked POST, a reader with a
64 KiB receive buffer attaches and then stops reading; the producer writes 1 GiB
(128 MiB in --quick) while the reader stalls for 30 s (5 s), the stream staying
live. The added memory is the highest RSS sampled during the stall minus the RSS
just before the producer started writing. Then the reader resumes, must receive
every byte, and the producer ends the stream.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.procs import MB, MIB, BenchError, RssSampler, curl, http_json, memory_kb
from bench.report import Row, ScenarioResult, below, median
from bench.servers import Server

SEED = 5


def pattern_digest(size: int) -> str:
    """SHA-256 of what ``python -m bench.loadgen post --seed SEED --size size`` sends."""
    import random

    block = random.Random(SEED).randbytes(MIB)
    digest = hashlib.sha256()
    whole, rest = divmod(size, MIB)
    for _ in range(whole):
        digest.update(block)
    digest.update(block[:rest])
    return digest.hexdigest()


def post_and_replay(ctx: Context, weft: Server, stream: str, size: int) -> dict[str, Any]:
    expected = pattern_digest(size)
    producer = ctx.worker(
        f"mem-{stream}", ["post", "--port", str(weft.port), "--id", stream, "--size", str(size)]
    )
    try:
        producer.expect("created", 30)
        sent = producer.result(600)
    finally:
        ctx.stop(producer)
    status, seconds, _, received, _ = curl(["-o", "/dev/null", f"{weft.url}/stream/{stream}"])
    errors = []
    reply = sent["reply"]
    if sent["status"] != 201 or reply.get("size") != size or reply.get("sha256") != expected:
        errors.append(f"{stream}: stored {reply}, expected {size} bytes sha256 {expected}")
    if status != 200 or received != size:
        errors.append(f"{stream}: replay answered {status} with {received} bytes")
    time.sleep(0.5)
    return {
        "stream": stream,
        "size": size,
        "ingest_mb_s": round(size / MB / sent["seconds"], 1),
        "replay_mb_s": round(size / MB / seconds, 1),
        "hwm_mb": round(memory_kb(weft.pid).get("VmHWM", 0) / 1024, 1),
        "rss_mb": round(memory_kb(weft.pid).get("VmRSS", 0) / 1024, 1),
        "errors": errors,
    }


def stalled_reader(ctx: Context, size: int, stall: float, stale: Path) -> dict[str, Any]:
    """``stale``: the size test's data, deleted just before the first write here so
    that both producers write into freshly freed memory (see throughput.py)."""
    weft = ctx.weft("stall")
    sampler = RssSampler(weft.pid, 0.02)
    producer = reader = None
    stream = "stall"
    blocked: list[str] = []
    try:
        port = str(weft.port)
        # Control: the same producer with no reader at all, on the same server.
        control = ctx.worker(
            "stall-control",
            ["post", "--port", port, "--id", "control", "--size", str(size), "--chunked"]
            + ["--wait-go"],
        )
        control.expect("created", 30)
        shutil.rmtree(stale, ignore_errors=True)
        control.send("go")
        unread = control.result(300)
        ctx.stop(control)
        http_json("DELETE", f"{weft.url}/stream/control")  # just before the next write
        producer = ctx.worker(
            "stall-producer",
            ["post", "--port", port, "--id", stream, "--size", str(size)]
            + ["--chunked", "--hold", "--wait-go"],
        )
        producer.expect("created", 30)
        reader = ctx.worker(
            "stall-reader", ["read", "--port", port, "--id", stream, "--stall", "--rcvbuf", "65536"]
        )
        reader.expect("attached", 30)
        time.sleep(0.5)
        before = sampler.now_kb()
        go = time.monotonic()
        producer.send("go")
        # A stalled reader must not slow the producer: it should be done long
        # before the stall ends. If it is not, resume the reader anyway (else
        # both would wait forever) and record it.
        written_event = producer.poll("written", stall)
        written_at = time.monotonic()
        time.sleep(max(0.0, go + stall - time.monotonic()))
        stalled_until = time.monotonic()
        peak = sampler.peak_kb(go, stalled_until)
        reader.send("resume")
        if written_event is None:
            blocked.append(
                f"stall: the producer had not written {size} bytes after {stall:g} s: "
                "the stalled reader held it back"
            )
            written_event = producer.expect("written", 300)
            written_at = time.monotonic()
        written = float(written_event)
        # The stream must still be live when the reader resumes; then it ends.
        time.sleep(0.2)
        producer.send("finish")
        sent = producer.result(300)
        got = reader.result(300)
        if not weft.alive():
            raise BenchError("Weft exited during the stall")
    finally:
        sampler.stop()
        ctx.stop(producer, reader, weft)
    errors = list(blocked)
    expected = pattern_digest(size)
    if sent["reply"].get("size") != size or sent["reply"].get("sha256") != expected:
        errors.append(f"stall: stored {sent['reply']}, expected {size} bytes")
    if got["status"] != 200 or got["bytes"] != size or not got["complete"]:
        errors.append(f"stall: the reader got {got}, expected {size} bytes and the end")
    return {
        "size": size,
        "stall_s": round(stalled_until - go, 1),
        "rss_before_mb": round(before / 1024, 1),
        "peak_during_stall_mb": round(peak / 1024, 1),
        "added_mb": round((peak - before) / 1024, 1),
        "producer_mb_s_during_stall": round(size / MB / written, 1),
        "producer_mb_s_without_reader": round(size / MB / unread["write_seconds"], 1),
        "producer_done_after_s": round(written_at - go, 2),
        "reader_drain_mb_s": round(size / MB / got["seconds"], 1) if got["seconds"] else None,
        "errors": errors,
    }


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("memory")
    started = time.monotonic()
    small, large = 10 * MIB, (256 if ctx.quick else 4096) * MIB
    stall_size, stall = (128 if ctx.quick else 1024) * MIB, (5.0 if ctx.quick else 30.0)
    runs = ctx.runs_for(1)
    sizes: list[dict[str, Any]] = []
    stalls: list[dict[str, Any]] = []
    for run_no in range(1, runs + 1):
        weft = ctx.weft("memory")
        try:
            a = post_and_replay(ctx, weft, f"small-{run_no}", small)
            b = post_and_replay(ctx, weft, f"large-{run_no}", large)
        finally:
            ctx.stop(weft)
        growth = round(b["hwm_mb"] - a["hwm_mb"], 1)
        sizes.append({"run": run_no, "small": a, "large": b, "growth_mb": growth})
        print(
            f"  run {run_no} peak RSS {a['hwm_mb']} MB after {small // MIB} MiB, "
            f"{b['hwm_mb']} MB after {large // MIB} MiB (+{growth} MB; "
            f"ingest {b['ingest_mb_s']} MB/s, replay {b['replay_mb_s']} MB/s)",
            flush=True,
        )
        s = stalled_reader(ctx, stall_size, stall, weft.log_path.parent / "data")
        s["run"] = run_no
        stalls.append(s)
        print(
            f"  run {run_no} stalled reader {s['stall_s']} s on {stall_size // MIB} MiB: "
            f"RSS {s['rss_before_mb']} → peak {s['peak_during_stall_mb']} MB "
            f"(+{s['added_mb']} MB); producer {s['producer_mb_s_during_stall']} MB/s meanwhile, "
            f"{s['producer_mb_s_without_reader']} MB/s with no reader",
            flush=True,
        )
    result.errors = [e for x in sizes for e in x["small"]["errors"] + x["large"]["errors"]]
    result.errors += [e for s in stalls for e in s["errors"]]
    result.data = {"sizes": sizes, "stalls": stalls}
    big = f"{large // MIB} MiB" if large < 1 << 30 else f"{large >> 30} GiB"
    result.rows = [
        Row(
            "memory",
            f"RSS growth MB, 10 MiB → {big}",
            max(x["growth_mb"] for x in sizes),
            [("peak after 10 MiB", max(x["small"]["hwm_mb"] for x in sizes))],
            "< 20 MB",
            below(20),
            compare=False,
        ),
        Row(
            "memory",
            f"RSS added by {stall:g} s stalled reader MB",
            max(s["added_mb"] for s in stalls),
            [("RSS before", max(s["rss_before_mb"] for s in stalls))],
            "< 5 MB",
            below(5),
            compare=False,
        ),
        Row(
            "memory",
            "producer MB/s while a reader stalls",
            median(s["producer_mb_s_during_stall"] for s in stalls),
            [("no reader", median(s["producer_mb_s_without_reader"] for s in stalls))],
        ),
        Row(
            "memory",
            f"ingest MB/s of the {big} stream",
            median(x["large"]["ingest_mb_s"] for x in sizes),
            [("replay", median(x["large"]["replay_mb_s"] for x in sizes))],
            compare=False,
        ),
    ]
    result.seconds = round(time.monotonic() - started, 1)
    return result
