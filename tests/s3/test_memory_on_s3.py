"""The server's memory on S3 stays near ``s3.part_bytes × s3.max_concurrency`` however
much it uploads (issue 10): a 256 MiB stream, then 30 live streams that each seal a
segment while they are live. Peak RSS is the server's VmHWM (/proc/PID/status).
bench/s3store.py measures the same at full size."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.session
import httpx
import pytest

from tests.e2e.helpers import RawConnection, request_head, wait_for
from tests.e2e.test_disk_full import info, pattern
from tests.s3server import S3Server
from tests.server import ServerProcess

MiB = 1024 * 1024
SEG = 5 * MiB
PART = 5 * MiB
SLOTS = 4
MARGIN = 16 * MiB  # allocator and interpreter noise over the parts in flight (~7 MiB seen)
LARGE = 256 * MiB
LARGE_SEGMENTS = -(-LARGE // SEG)
LIVE = 30


def memory(server: ServerProcess, field: str) -> int:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc status")


def bucket_holds(raw: Any, bucket: str, segments: int) -> bool:
    """At least ``segments`` segment objects, each with its checksums, are stored."""
    names: list[str] = []
    for page in raw.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        names += [item["Key"] for item in page.get("Contents", [])]
    crc = sum(name.endswith(".crc") for name in names)
    return crc >= segments and len(names) - crc >= segments


@pytest.fixture
def raw(s3_server: S3Server) -> Iterator[Any]:
    client = botocore.session.get_session().create_client("s3", **s3_server.client_kwargs())
    yield client
    client.close()


@pytest.mark.timeout(120)
def test_rss_stays_near_the_parts_in_flight_for_a_large_stream_and_many_live_ones(
    server_factory: Callable[..., ServerProcess], s3_server: S3Server, s3_bucket: str, raw: Any
) -> None:
    server = server_factory(
        store_url=f"s3://{s3_bucket}/mem",
        segment_bytes=SEG,
        cache_bytes=0,
        s3={
            "endpoint_url": s3_server.endpoint_url,
            "region": s3_server.region,
            "access_key_id": s3_server.access_key_id,
            "secret_access_key": s3_server.secret_access_key,
            "part_bytes": PART,
            "max_concurrency": SLOTS,
        },
    )
    block = pattern(MiB, seed=21)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        # Warm-up: the first upload and read load what the server needs for them.
        assert client.post("/stream/warm", content=pattern(SEG + 10, seed=20)).status_code == 201
        wait_for(lambda: bucket_holds(raw, s3_bucket, 2), "the warm-up stream uploaded", 30)
        assert len(client.get("/stream/warm").content) == SEG + 10
        before = memory(server, "VmRSS")

        large = client.post("/stream/large", content=(block for _ in range(LARGE // MiB)))
        assert large.status_code == 201, large.text
        digest = hashlib.sha256()
        for _ in range(LARGE // MiB):
            digest.update(block)
        assert (large.json()["size"], large.json()["sha256"]) == (LARGE, digest.hexdigest())
        wait_for(lambda: bucket_holds(raw, s3_bucket, 2 + LARGE_SEGMENTS), "the large stream", 60)

        producers = [RawConnection(server.port) for _ in range(LIVE)]
        try:
            for number, producer in enumerate(producers):
                producer.send(request_head("POST", f"/stream/live-{number}", chunked=True))
                for _ in range(SEG // MiB + 1):  # a sealed segment and a tail
                    producer.send_chunk(block)
            sealed = 2 + LARGE_SEGMENTS + LIVE  # one sealed segment per live stream
            wait_for(lambda: bucket_holds(raw, s3_bucket, sealed), "the live streams' segments", 60)
            for producer in producers:
                producer.end_chunks()
                assert producer.read_head().status == 201  # sent before the body was read
            live = hashlib.sha256(block * (SEG // MiB + 1)).hexdigest()
            for number in range(LIVE):
                name = f"live-{number}"
                wait_for(lambda n=name: info(client, n)["state"] == "complete", f"{name}'s end")
                assert info(client, name)["sha256"] == live
            wait_for(lambda: bucket_holds(raw, s3_bucket, sealed + LIVE), "the live tails", 60)
        finally:
            for producer in producers:
                producer.close()
        peak = memory(server, "VmHWM")

        assert hashlib.sha256(client.get("/stream/live-7").content).hexdigest() == live

    growth = peak - before
    assert growth <= PART * SLOTS + MARGIN, f"peak RSS grew by {growth / MiB:.1f} MiB"
