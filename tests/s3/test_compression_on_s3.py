"""Compression at rest on the S3 tier (issue 12): segments go up compressed
(``.zst`` with its frame index ``.zidx``), reads from the bucket fetch only the
frames they need and return the uncompressed content, and uploads cut off by a
crash resume compressed."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from typing import Any

import httpx

from tests.e2e.helpers import sha256_hex, wait_for
from tests.s3.conftest import SEG
from tests.s3.faultproxy import FaultProxy
from tests.s3.test_server_on_s3 import objects
from tests.server import ServerProcess
from tests.unit.test_frames import log_like

IDENTITY = {"Accept-Encoding": "identity"}


def stream_objects(raw: Any, bucket: str) -> dict[str, int]:
    return {name.rsplit("/", 1)[1]: size for name, size in objects(raw, bucket).items()}


def compressed_in_bucket(raw: Any, bucket: str, count: int) -> dict[str, int] | None:
    found = stream_objects(raw, bucket)
    want = {f"{n:08d}{suffix}" for n in range(count) for suffix in (".zst", ".zidx")}
    return found if set(found) == want else None


def check_reads(client: httpx.Client, stream_id: str, data: bytes) -> None:
    whole = client.get(f"/stream/{stream_id}", headers=IDENTITY)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-length"] == str(len(data))
    span = f"bytes={SEG - 10}-{2 * SEG + 9}"
    ranged = client.get(f"/stream/{stream_id}", headers={**IDENTITY, "Range": span})
    assert ranged.status_code == 206 and ranged.content == data[SEG - 10 : 2 * SEG + 10]
    resumed = client.get(f"/stream/{stream_id}", params={"offset": 2 * SEG + 5}, headers=IDENTITY)
    assert resumed.status_code == 200 and resumed.content == data[2 * SEG + 5 :]


def test_segments_go_up_compressed_and_read_back_from_the_bucket(
    s3_weft: Callable[..., ServerProcess], raw: Any, s3_bucket: str
) -> None:
    server = s3_weft(compression="zstd")
    data = log_like(3 * SEG + 1234)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        posted = client.post("/stream/zlog", content=data)
        assert posted.status_code == 201 and posted.json()["sha256"] == sha256_hex(data)
        found = wait_for(lambda: compressed_in_bucket(raw, s3_bucket, 4), "compressed objects")
        packed = sum(size for name, size in found.items() if name.endswith(".zst"))
        assert packed < len(data) // 4
        root = server.workdir / "data" / "segments"
        wait_for(lambda: not [p for p in root.iterdir() if p.is_dir()], "the local files to go")
        check_reads(client, "zlog", data)  # cache_bytes 0: every read is a ranged GET
        info = client.get("/streams/zlog").json()
        assert info["size"] == len(data) and info["stored_bytes"] == packed
        encoded = client.get("/stream/zlog", headers={"Accept-Encoding": "gzip"})
        assert encoded.headers["content-encoding"] == "gzip"
        assert encoded.content == data  # httpx decodes it
        with client.stream("GET", "/stream/zlog", headers={"Accept-Encoding": "gzip"}) as got:
            assert gzip.decompress(b"".join(got.iter_raw())) == data
    server.config["compression"] = "none"  # compressed objects stay readable
    server.restart()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        check_reads(client, "zlog", data)


def test_uploads_cut_off_by_a_crash_resume_compressed(
    s3_weft: Callable[..., ServerProcess], raw: Any, s3_bucket: str, proxy: FaultProxy
) -> None:
    server = s3_weft(compression="zstd")
    data = log_like(2 * SEG + 999, seed=3)
    proxy.down = True  # nothing reaches the bucket: segments wait, compressed or not
    with httpx.Client(base_url=server.url, timeout=30) as client:
        posted = client.post("/stream/zcrash", content=data)
        assert posted.status_code == 201
        root = server.workdir / "data" / "segments"
        wait_for(lambda: len(list(root.glob("*/*.zst"))) >= 1, "a segment compressed locally")
    server.kill()
    proxy.down = False
    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        wait_for(lambda: compressed_in_bucket(raw, s3_bucket, 3), "compressed objects", 30)
        check_reads(client, "zcrash", data)
        assert client.get("/streams/zcrash").json()["stored_bytes"] < len(data) // 4


def test_raw_objects_from_before_stay_readable_with_compression_on(
    s3_weft: Callable[..., ServerProcess], raw: Any, s3_bucket: str
) -> None:
    server = s3_weft()
    data = log_like(2 * SEG + 77, seed=5)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/stream/zold", content=data).status_code == 201
        wait_for(lambda: len(stream_objects(raw, s3_bucket)) == 6, "raw objects")
    server.config["compression"] = "zstd"
    server.restart()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        check_reads(client, "zold", data)
        assert client.get("/streams/zold").json()["stored_bytes"] == len(data)
