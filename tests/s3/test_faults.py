"""A real server on S3 through faults (SPEC §12.1): the bucket unreachable at
start, throttling and slow answers, S3 itself stopped in the middle of an
upload, Weft killed while uploads are in flight."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.session
import httpx
import pytest

from tests.e2e.helpers import (
    RawConnection,
    assert_json_error,
    request_head,
    sha256_hex,
    wait_for,
)
from tests.e2e.test_disk_full import pattern
from tests.s3.conftest import PREFIX, SEG, MiB
from tests.s3.faultproxy import FaultProxy
from tests.s3.test_server_on_s3 import local_bytes, objects, segments
from tests.s3server import S3Server
from tests.server import ServerProcess


def chunks(size: int, seed: int) -> Iterator[bytes]:
    """size bytes in 1 MiB chunks, each unlike every other (pattern() repeats
    every MiB, so a segment swapped for another would not show)."""
    for at in range(0, size, MiB):
        block = hashlib.sha256(f"{seed}:{at}".encode()).digest() * (MiB // 32)
        yield block[: min(MiB, size - at)]


def unique(size: int, seed: int) -> bytes:
    return b"".join(chunks(size, seed))


def unfinished_uploads(raw: Any, bucket: str) -> list[str]:
    reply = raw.list_multipart_uploads(Bucket=bucket, Prefix=PREFIX)
    return [upload["Key"] for upload in reply.get("Uploads", [])]


def test_weft_starts_while_the_bucket_is_down_and_uploads_once_it_is_back(
    s3_weft: Callable[..., ServerProcess], raw: Any, s3_bucket: str, proxy: FaultProxy
) -> None:
    proxy.down = True
    server = s3_weft(max_pending_bytes=3 * SEG)  # starts: nothing asks the bucket first
    data = pattern(2 * SEG + 100, seed=21)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        assert "S3" in assert_json_error(client.get("/readyz"), 503)
        posted = client.post("/stream/early", content=data)  # within max_pending_bytes
        assert posted.status_code == 201, posted.text
        assert posted.json()["sha256"] == sha256_hex(data)
        assert client.get("/stream/early").content == data  # from the local disk
        assert segments(raw, s3_bucket) == []

        proxy.down = False
        want = [("00000000", SEG), ("00000001", SEG), ("00000002", 100)]
        wait_for(lambda: segments(raw, s3_bucket) == want, "every segment uploaded")
        assert client.get("/readyz").status_code == 200
        wait_for(lambda: local_bytes(server) < 64 * 1024, "the local files to be evicted")
        assert client.get("/stream/early").content == data  # from the bucket


def test_a_live_stream_whose_bytes_are_in_a_bucket_that_is_down_at_start_recovers_later(
    s3_weft: Callable[..., ServerProcess], raw: Any, s3_bucket: str, proxy: FaultProxy
) -> None:
    server = s3_weft()
    data = unique(3 * SEG, seed=27)
    cut = 2 * SEG + 100
    with RawConnection(server.port) as producer:
        producer.send(request_head("POST", "/stream/later", chunked=True))
        for at in range(0, cut, MiB):
            producer.send_chunk(data[at : min(at + MiB, cut)])
        wait_for(lambda: len(segments(raw, s3_bucket)) == 2, "two full segments uploaded")
        wait_for(lambda: local_bytes(server) < MiB, "the full segments to leave the disk")
        with httpx.Client(base_url=server.url, timeout=30) as client:
            wait_for(lambda: client.head("/stream/later").headers["upload-offset"] == str(cut), "")
        server.kill()

    proxy.down = True  # the digest of the live stream needs its bytes, in the bucket
    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert "S3" in assert_json_error(client.get("/readyz"), 503)
        # Its size is not known until the bucket is back: a resuming producer
        # gets 503 and asks again, never a stale offset.
        head = client.head("/stream/later")
        assert head.status_code == 503 and "upload-offset" not in head.headers
        assert client.get("/streams/later").json()["state"] == "live"
        resume = client.patch("/stream/later", headers={"Upload-Offset": str(cut)}, content=b"")
        assert "object store" in assert_json_error(resume, 503)
        other = unique(SEG // 2, seed=28)  # other streams work meanwhile
        assert client.post("/stream/other", content=other).status_code == 201
        assert client.get("/stream/other").content == other

        proxy.down = False  # the recovery is tried again by itself
        rest = {"Upload-Offset": str(cut), "Upload-Complete": "?1"}
        wait_for(
            lambda: (
                client.patch("/stream/later", headers=rest, content=data[cut:]).status_code == 204
            ),
            "the stream to be recovered and completed",
        )
        done = client.get("/streams/later").json()
        assert (done["state"], done["sha256"]) == ("complete", sha256_hex(data))
        assert client.get("/stream/later").content == data


def test_throttling_and_slow_answers_are_retried_through_the_server(
    s3_weft: Callable[..., ServerProcess], raw: Any, s3_bucket: str, proxy: FaultProxy
) -> None:
    # Uploads meet 503 SlowDown, then answers slower than s3.timeout; every
    # request is retried (with backoff) until the bucket has each segment.
    server = s3_weft(retries=8, timeout=1, max_backoff=0.2)
    data = pattern(2 * SEG + 4321, seed=22)
    proxy.fail_next, proxy.delay_next, proxy.delay_seconds = 4, 2, 3.0
    with httpx.Client(base_url=server.url, timeout=30) as client:
        posted = client.post("/stream/throttled", content=data)
        assert posted.status_code == 201, posted.text
        want = [("00000000", SEG), ("00000001", SEG), ("00000002", 4321)]
        wait_for(lambda: segments(raw, s3_bucket) == want, "every segment uploaded")
        assert proxy.faults == 6
        wait_for(lambda: local_bytes(server) < 64 * 1024, "the local files to be evicted")

        # Reads from the bucket too: throttled, slow, then a body cut short.
        proxy.fail_next, proxy.delay_next = 2, 1
        proxy.cut_next, proxy.cut_after = 1, 1 << 20
        started = time.monotonic()
        whole = client.get("/stream/throttled")
        assert whole.status_code == 200 and sha256_hex(whole.content) == sha256_hex(data)
        assert time.monotonic() - started >= 1  # waited out the slow answer's timeout
        assert proxy.faults == 10
        ranged = client.get("/stream/throttled", headers={"Range": f"bytes={SEG - 5}-{SEG + 4}"})
        assert ranged.status_code == 206 and ranged.content == data[SEG - 5 : SEG + 5]


def test_a_crash_between_the_completion_and_store_finish_still_uploads_the_last_segment(
    s3_weft: Callable[..., ServerProcess], raw: Any, s3_bucket: str, proxy: FaultProxy
) -> None:
    server = s3_weft()
    data = pattern(SEG + 999, seed=23)
    proxy.down = True  # nothing reaches the bucket before the crash
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/stream/window", content=data).status_code == 201
    server.kill()
    # The disk as a kill -9 between the row's write (complete) and store.finish
    # leaves it: the store was never told the stream is finished.
    markers = list((server.workdir / "data" / "s3").glob("*/finished"))
    assert len(markers) == 1
    markers[0].unlink()

    proxy.down = False
    server.start()
    want = [("00000000", SEG), ("00000001", 999)]
    wait_for(lambda: segments(raw, s3_bucket) == want, "both segments uploaded", timeout=15)
    wait_for(lambda: local_bytes(server) < 64 * 1024, "the local files to be evicted")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.get("/stream/window")
        assert response.status_code == 200 and response.content == data
        assert response.headers["x-stream-state"] == "complete"


def test_weft_killed_while_segments_upload_makes_them_at_the_next_start(
    s3_weft: Callable[..., ServerProcess], raw: Any, s3_bucket: str, proxy: FaultProxy
) -> None:
    server = s3_weft()
    proxy.upload_rate = 2 * MiB  # a 5 MiB segment takes 2.5 s to go up
    data = unique(4 * SEG + 1234, seed=24)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/stream/inflight", content=data).status_code == 201
    wait_for(lambda: unfinished_uploads(raw, s3_bucket), "multipart uploads in flight")
    server.kill()  # in the middle of those uploads
    assert len(segments(raw, s3_bucket)) < 5

    proxy.upload_rate = 0
    server.start()
    want = [(f"{n:08d}", SEG) for n in range(4)] + [("00000004", 1234)]
    wait_for(lambda: segments(raw, s3_bucket) == want, "every segment uploaded")
    # What the killed run had begun is aborted, not left to cost storage.
    wait_for(lambda: not unfinished_uploads(raw, s3_bucket), "no unfinished upload left")
    wait_for(lambda: local_bytes(server) < 64 * 1024, "the local files to be evicted")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.get("/stream/inflight")
        assert response.status_code == 200
        assert sha256_hex(response.content) == sha256_hex(data)


@pytest.mark.timeout(180)  # about 20 s; several times that on a loaded machine
def test_s3_stopped_and_restarted_in_the_middle_of_a_200_mib_stream_loses_nothing(
    server_factory: Callable[..., ServerProcess], s3_server: S3Server, tmp_path: Path
) -> None:
    own = S3Server(tmp_path / "own-s3", s3_server.weed).start()  # the session's stays up
    raw = botocore.session.get_session().create_client("s3", **own.client_kwargs())
    try:
        bucket = own.create_bucket()
        server = server_factory(
            store_url=f"s3://{bucket}/pre",
            namespace="e2e",
            segment_bytes=SEG,
            cache_bytes=0,
            s3={
                "endpoint_url": own.endpoint_url,
                "region": own.region,
                "access_key_id": own.access_key_id,
                "secret_access_key": own.secret_access_key,
                "part_bytes": SEG,
                "retries": 2,
                "timeout": 5,
                "max_backoff": 0.5,
            },
        )
        size, count = 200 * MiB, 40
        stopped, paused, restarted = threading.Event(), threading.Event(), threading.Event()
        digest = hashlib.sha256()

        def body() -> Iterator[bytes]:
            for n, chunk in enumerate(chunks(size, seed=25)):
                if n == 100:  # S3 is stopped by now, with uploads under way
                    assert stopped.wait(60)
                if n == 160:  # the bucket comes back while the producer still writes
                    paused.set()
                    assert restarted.wait(60)
                digest.update(chunk)
                yield chunk

        replies: list[httpx.Response] = []
        producer = threading.Thread(
            target=lambda: replies.append(
                httpx.post(f"{server.url}/stream/big", content=body(), timeout=120)
            )
        )
        producer.start()
        try:
            wait_for(
                lambda: len(segments(raw, bucket)) >= 4 and unfinished_uploads(raw, bucket),
                "uploads under way",
                timeout=60,
            )
            own.stop()
            stopped.set()
            assert paused.wait(60)
            own.start()
        finally:
            stopped.set()
            restarted.set()
            producer.join(120)
        assert replies and replies[0].status_code == 201, replies
        assert replies[0].json()["sha256"] == digest.hexdigest()

        want = [(f"{n:08d}", SEG) for n in range(count)]
        wait_for(lambda: segments(raw, bucket) == want, "every segment uploaded", timeout=60)
        wait_for(
            lambda: sum(name.endswith(".crc") for name in objects(raw, bucket)) == count,
            "every segment's checksums",
            timeout=60,
        )
        wait_for(lambda: not unfinished_uploads(raw, bucket), "no unfinished upload left")
        replay = hashlib.sha256()
        with httpx.stream("GET", f"{server.url}/stream/big", timeout=60) as response:
            assert response.status_code == 200
            for piece in response.iter_bytes():
                replay.update(piece)
        assert replay.hexdigest() == digest.hexdigest()
    finally:
        raw.close()
        own.stop()
