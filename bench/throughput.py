"""Scenarios 1 and 2: one large stream in (ingest) and out (replay) with curl.

Per run, in this order: Weft (curl POST -T file, then GET), nginx (PUT -T file
into a file, then GET with sendfile), piping-server (curl POST -T file relayed to
a concurrent curl GET, nothing stored), and the loopback TCP ceiling (1 MiB
writes from one process to another). MB/s is 10^6 bytes per second of curl's
own transfer time.

Page-cache traps of small virtual machines shape the procedure: memory freed
and left idle for a few seconds is several times slower to write again, and
files untouched for ~30 s drop out of the page cache. So the systems alternate
run by run, the previous writer's output is deleted just before the next
writer's run (a throwaway copy of the source is written first, so the very first
run also writes into freshly freed memory), and the source is re-read before
each run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.procs import MB, MIB, cpu_seconds, curl, http_json
from bench.report import Row, ScenarioResult, median, ratio_above, ratio_at_least
from bench.servers import Server

BLOCK = 8 * MIB


def make_source(path: Path, size: int) -> str:
    """Random bytes; returns their SHA-256 (Weft reports it back after ingest)."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(BLOCK, left))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


def copy(source: Path, target: Path) -> None:
    with open(source, "rb", buffering=0) as src, open(target, "wb", buffering=0) as dst:
        buffer = bytearray(BLOCK)
        while got := src.readinto(buffer):
            dst.write(memoryview(buffer)[:got])


def reread(path: Path) -> float:
    """Read the whole file so it sits in the page cache; return MB/s."""
    buffer = bytearray(BLOCK)
    total = 0
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as source:
        while got := source.readinto(buffer):
            total += got
    return total / MB / (time.perf_counter() - started)


def delete_output(server: Server, stream: str, directory: Path) -> None:
    if server.name == "weft":
        with contextlib.suppress(OSError):
            http_json("DELETE", f"{server.url}/stream/{stream}")
    elif server.name == "nginx":
        with contextlib.suppress(FileNotFoundError):
            (directory / "root" / "stream" / stream).unlink()
    else:
        with contextlib.suppress(FileNotFoundError):
            (directory / "root" / stream).unlink()


def measure_store(server: Server, run: int, source: Path, size: int, sha256: str) -> dict[str, Any]:
    """Ingest with curl -T, then replay with curl GET; Weft's stored digest is checked."""
    stream = f"bench-{run}"
    url = f"{server.url}/stream/{stream}"
    source_speed = reread(source)
    upload = ["-T", str(source), url]
    if server.upload_method == "POST":
        upload = ["-X", "POST", *upload]
    cpu_before = cpu_seconds(server.pid)
    ingest_status, ingest_s, sent, _, body = curl(upload)
    cpu_ingested = cpu_seconds(server.pid)
    replay_status, replay_s, _, received, _ = curl(["-o", "/dev/null", url])
    cpu_replayed = cpu_seconds(server.pid)
    errors = []
    if ingest_status not in (200, 201, 204):
        errors.append(f"{server.name} ingest answered {ingest_status}")
    if sent != size:
        errors.append(f"{server.name}: curl sent {sent} bytes, not {size}")
    if server.name == "weft":
        try:
            reply = json.loads(body)
        except ValueError:
            reply = {"raw": body[:200]}
        if reply.get("size") != size or reply.get("sha256") != sha256:
            errors.append(f"weft stored {reply}, expected size {size} sha256 {sha256}")
    if replay_status != 200:
        errors.append(f"{server.name} replay answered {replay_status}")
    if received != size:
        errors.append(f"{server.name} replay returned {received} bytes, not {size}")
    return {
        "run": run,
        "system": server.name,
        "stream": stream,
        "source_read_mb_s": round(source_speed),
        "ingest_mb_s": round(size / MB / ingest_s, 1),
        "replay_mb_s": round(size / MB / replay_s, 1),
        "ingest_server_cpu_s": round(cpu_ingested - cpu_before, 2),
        "replay_server_cpu_s": round(cpu_replayed - cpu_ingested, 2),
        "errors": errors,
    }


def measure_relay(server: Server, run: int, source: Path, size: int) -> dict[str, Any]:
    """piping-server 1 → 1: a curl GET waits on /path, curl POST -T file sends to it."""
    source_speed = reread(source)
    url = f"{server.url}/bench-{run}"
    fmt = "%{http_code} %{size_download} %{size_upload}"
    cpu_before = cpu_seconds(server.pid)
    receiver = subprocess.Popen(
        ["curl", "-sS", "-o", "/dev/null", "-w", fmt, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = time.perf_counter()
    sender = subprocess.Popen(
        ["curl", "-sS", "-o", "/dev/null", "-w", fmt, "-X", "POST", "-T", str(source), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sent_out, sent_err = sender.communicate(timeout=600)
        got_out, got_err = receiver.communicate(timeout=600)
    finally:
        for proc in (sender, receiver):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seconds = time.perf_counter() - started
    cpu_after = cpu_seconds(server.pid)
    errors = []
    try:
        send_status, _, uploaded = sent_out.split()
        recv_status, downloaded, _ = got_out.split()
        if send_status != "200" or recv_status != "200":
            errors.append(f"piping answered {send_status} / {recv_status}")
        if int(float(uploaded)) != size or int(float(downloaded)) != size:
            errors.append(f"piping relayed {uploaded} → {downloaded} bytes, not {size}")
    except ValueError:
        errors.append(f"piping relay failed: {sent_err.strip()} {got_err.strip()}")
    return {
        "run": run,
        "system": "piping",
        "source_read_mb_s": round(source_speed),
        "relay_mb_s": round(size / MB / seconds, 1),
        "relay_server_cpu_s": round(cpu_after - cpu_before, 2),
        "errors": errors,
    }


def measure_tcp(ctx: Context, run: int, size: int) -> dict[str, Any]:
    """The loopback ceiling: 1 MiB sendall() from one process, recv_into() in another."""
    sink = ctx.worker(f"tcp-sink-{run}", ["sink"])
    source = None
    try:
        port = sink.expect("listening", 30)
        source = ctx.worker(f"tcp-source-{run}", ["source", "--port", port, "--size", str(size)])
        got = sink.result(120)
        source.result(30)
    finally:
        ctx.stop(sink, source)
    errors = [] if got["bytes"] == size else [f"tcp sink got {got['bytes']} bytes, not {size}"]
    return {
        "run": run,
        "system": "tcp",
        "tcp_mb_s": round(size / MB / got["seconds"], 1),
        "errors": errors,
    }


def run(ctx: Context, *, want_ingest: bool, want_replay: bool) -> list[ScenarioResult]:
    size = (64 if ctx.quick else 1024) * MIB
    runs = ctx.runs_for(3)
    ingest = ScenarioResult("ingest")
    replay = ScenarioResult("replay")
    started = time.monotonic()
    directory = ctx.directory("throughput")
    source = directory / "source.bin"
    print(f"  making {size // MIB} MiB of random bytes ...", flush=True)
    sha256 = make_source(source, size)
    weft = ctx.weft("throughput")
    static = ctx.static_reference()
    piping = ctx.piping() if want_ingest else None
    if want_ingest and piping is None:
        ingest.notes.append("piping-server unavailable: its reference is missing")
    labels = {"weft": weft.label, "static": static.label}
    if piping is not None:
        labels["piping"] = piping.label
    results: list[dict[str, Any]] = []
    try:
        scratch = directory / "prime.bin"
        copy(source, scratch)
        previous: tuple[Server, str] | None = None
        for run_no in range(1, runs + 1):
            for server in (weft, static):
                # The previous writer's output goes just before this run.
                if previous is not None:
                    delete_output(previous[0], previous[1], previous[0].log_path.parent)
                else:
                    scratch.unlink()
                m = measure_store(server, run_no, source, size, sha256)
                previous = (server, m["stream"])
                results.append(m)
                print(
                    f"  run {run_no} {server.name:<6} ingest {m['ingest_mb_s']:8.1f} MB/s  "
                    f"replay {m['replay_mb_s']:8.1f} MB/s  server CPU "
                    f"{m['ingest_server_cpu_s']:.2f} + {m['replay_server_cpu_s']:.2f} s"
                    + (f"  !! {'; '.join(m['errors'])}" if m["errors"] else ""),
                    flush=True,
                )
            if piping is not None:
                m = measure_relay(piping, run_no, source, size)
                results.append(m)
                print(f"  run {run_no} piping relay {m['relay_mb_s']:8.1f} MB/s", flush=True)
            if want_ingest:
                m = measure_tcp(ctx, run_no, size)
                results.append(m)
                print(f"  run {run_no} loopback TCP {m['tcp_mb_s']:8.1f} MB/s", flush=True)
        if previous is not None:
            delete_output(previous[0], previous[1], previous[0].log_path.parent)
    finally:
        ctx.stop(weft, static, piping)
        with contextlib.suppress(OSError):
            source.unlink()

    def med(system: str, key: str) -> float | None:
        return median(r[key] for r in results if r["system"] == system and key in r)

    static_name = static.name
    errors = [e for r in results for e in r["errors"]]
    data = {"size_bytes": size, "runs": runs, "systems": labels, "results": results}
    ingest.data = data
    replay.data = {"same_as": "ingest"} if want_ingest else data
    ingest.errors = list(errors)
    replay.errors = [] if want_ingest else list(errors)
    gib = f"{size // MIB} MiB" if size < 1 << 30 else f"{size >> 30} GiB"
    w_in, w_out = med("weft", "ingest_mb_s"), med("weft", "replay_mb_s")
    ingest.rows = [
        Row(
            "ingest",
            f"MB/s, curl POST {gib}",
            w_in,
            [(f"{static_name} PUT→file", med(static_name, "ingest_mb_s"))],
            "≥ 1.2× ref",
            ratio_at_least(1.2),
        ),
    ]
    if piping is not None:
        ingest.rows.append(
            Row(
                "ingest",
                "MB/s vs relay",
                w_in,
                [("piping 1→1", med("piping", "relay_mb_s"))],
                "> 1× ref",
                ratio_above(1.0),
            )
        )
    ingest.rows += [
        Row("ingest", "MB/s vs loopback ceiling", w_in, [("tcp", med("tcp", "tcp_mb_s"))]),
        Row(
            "ingest",
            "server CPU s",
            med("weft", "ingest_server_cpu_s"),
            [(static_name, med(static_name, "ingest_server_cpu_s"))]
            + ([("piping", med("piping", "relay_server_cpu_s"))] if piping else []),
            digits=2,
        ),
    ]
    replay.rows = [
        Row(
            "replay",
            f"MB/s, curl GET {gib}",
            w_out,
            [(f"{static_name} sendfile", med(static_name, "replay_mb_s"))],
            "≥ 1.5× ref",
            ratio_at_least(1.5),
        ),
        Row(
            "replay",
            "server CPU s",
            med("weft", "replay_server_cpu_s"),
            [(static_name, med(static_name, "replay_server_cpu_s"))],
            digits=2,
        ),
    ]
    elapsed = time.monotonic() - started
    ingest.seconds = replay.seconds = round(elapsed, 1)
    chosen = ([ingest] if want_ingest else []) + ([replay] if want_replay else [])
    return chosen
