"""A real server with ``store_url: s3://BUCKET/PREFIX`` on SeaweedFS (SPEC §12.1),
reaching the bucket through tests/s3/faultproxy.py so a test can take it away.

``cache_bytes: 0``: a segment leaves the local disk as soon as it is in the
bucket, so every read of stored data here is a ranged GET."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import (
    RawConnection,
    assert_json_error,
    get_bytes,
    request_head,
    sha256_hex,
    wait_for,
    wait_until_resumable,
)
from tests.e2e.test_config import run_app, write_config
from tests.e2e.test_disk_full import info, pattern, produce_until_refused
from tests.e2e.test_integrity import verify
from tests.s3.conftest import PREFIX, SEG, MiB
from tests.s3.faultproxy import FaultProxy
from tests.server import ServerProcess


def objects(raw: Any, bucket: str) -> dict[str, int]:
    reply = raw.list_objects_v2(Bucket=bucket, Prefix=PREFIX)
    return {item["Key"][len(PREFIX) :]: item["Size"] for item in reply.get("Contents", [])}


def segments(raw: Any, bucket: str) -> list[tuple[str, int]]:
    """(segment name, size) of the one stream in the bucket, without checksum objects."""
    names = sorted((k, v) for k, v in objects(raw, bucket).items() if not k.endswith(".crc"))
    return [(name.rsplit("/", 1)[1], size) for name, size in names]


def local_bytes(server: ServerProcess) -> int:
    """Disk blocks the local segment files take, in bytes."""
    root = server.workdir / "data" / "segments"
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def test_a_stream_of_several_segments_is_served_from_the_bucket(
    s3_weft: Callable[..., ServerProcess], raw: Any, s3_bucket: str
) -> None:
    server = s3_weft()
    data = pattern(3 * SEG + 1234, seed=7)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        posted = client.post("/stream/big", content=data)
        assert posted.status_code == 201, posted.text
        assert posted.json()["sha256"] == sha256_hex(data)
        want = [("00000000", SEG), ("00000001", SEG), ("00000002", SEG), ("00000003", 1234)]
        wait_for(lambda: segments(raw, s3_bucket) == want, "four segment objects")
        root = server.workdir / "data" / "segments"
        wait_for(lambda: not [p for p in root.iterdir() if p.is_dir()], "the local files to go")

        whole = client.get("/stream/big")
        assert whole.status_code == 200
        assert whole.headers["content-length"] == str(len(data))
        assert whole.headers["x-stream-state"] == "complete"
        assert whole.content == data

        ranged = client.get("/stream/big", headers={"Range": f"bytes={SEG - 10}-{2 * SEG + 9}"})
        assert ranged.status_code == 206
        assert ranged.headers["content-range"] == f"bytes {SEG - 10}-{2 * SEG + 9}/{len(data)}"
        assert ranged.content == data[SEG - 10 : 2 * SEG + 10]
        suffix = client.get("/stream/big", headers={"Range": "bytes=-100"})
        assert suffix.status_code == 206 and suffix.content == data[-100:]

        resumed = client.get("/stream/big", params={"offset": 2 * SEG + 5})
        assert resumed.status_code == 200
        assert resumed.headers["x-stream-offset"] == str(2 * SEG + 5)
        assert resumed.content == data[2 * SEG + 5 :]

        head = client.head("/stream/big")
        assert head.status_code == 200
        assert head.headers["upload-offset"] == str(len(data))
        assert head.headers["content-length"] == str(len(data))

        assert client.get("/readyz").status_code == 200
        assert client.delete("/stream/big").status_code == 204
        assert client.get("/stream/big").status_code == 404
        wait_for(lambda: objects(raw, s3_bucket) == {}, "the stream's objects to go")


def test_a_replay_from_the_bucket_reads_ahead_in_few_gets_and_a_range_reads_only_its_own(
    s3_weft: Callable[..., ServerProcess], raw: Any, s3_bucket: str, proxy: FaultProxy
) -> None:
    server = s3_weft()
    data = pattern(3 * SEG + 1234, seed=9)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/stream/ahead", content=data).status_code == 201
        wait_for(lambda: len(segments(raw, s3_bucket)) == 4, "four segment objects")
        root = server.workdir / "data" / "segments"
        wait_for(lambda: not [p for p in root.iterdir() if p.is_dir()], "the local files to go")

        def segment_gets() -> int:
            return sum(1 for r in proxy.requests if r.startswith("GET ") and r[-8:].isdigit())

        before = segment_gets()
        assert client.get("/stream/ahead").content == data
        # 1 MiB reads: 16 GETs one by one; reading 4 MiB ahead, 2 per 5 MiB segment.
        assert segment_gets() - before <= 8, proxy.requests[-20:]
        before = segment_gets()
        # A range the replay's windows do not hold: one GET, of its own blocks.
        ranged = client.get("/stream/ahead", headers={"Range": "bytes=10-20"})
        assert ranged.status_code == 206 and ranged.content == data[10:21]
        assert segment_gets() - before == 1


def test_a_live_tail_crosses_a_segment_that_went_to_the_bucket(
    s3_weft: Callable[..., ServerProcess], raw: Any, s3_bucket: str
) -> None:
    server = s3_weft()
    data = pattern(SEG + 300, seed=8)
    with RawConnection(server.port) as producer, RawConnection(server.port) as early:
        producer.send(request_head("POST", "/stream/tail", chunked=True))
        producer.send_chunk(data[: SEG - 100])
        wait_for(lambda: httpx.head(f"{server.url}/stream/tail").status_code == 200, "stream")
        early.send(request_head("GET", "/stream/tail"))
        head = early.read_head()
        assert head.status == 200 and head.chunked
        assert early.read_chunks_until(SEG - 100) == data[: SEG - 100]

        producer.send_chunk(data[SEG - 100 : SEG + 200])  # fills segment 0
        assert early.read_chunks_until(300) == data[SEG - 100 : SEG + 200]
        wait_for(lambda: segments(raw, s3_bucket) == [("00000000", SEG)], "segment 0 uploaded")
        wait_for(lambda: local_bytes(server) < 1 * MiB, "segment 0 to leave the disk")

        with RawConnection(server.port) as late:  # replays segment 0 from the bucket
            late.send(request_head("GET", "/stream/tail"))
            assert late.read_head().status == 200
            assert late.read_chunks_until(SEG + 200) == data[: SEG + 200]
            producer.send_chunk(data[SEG + 200 :])
            producer.end_chunks()
            assert producer.read_head().status == 201
            assert late.read_chunks_until(100) == data[SEG + 200 :]
            assert late.read_chunk() == b""
        assert early.read_chunks_until(100) == data[SEG + 200 :]
        assert early.read_chunk() == b""
    wait_for(lambda: len(segments(raw, s3_bucket)) == 2, "the last segment uploaded")


def test_bucket_down_producers_write_until_max_pending_then_503_and_nothing_is_lost(
    s3_weft: Callable[..., ServerProcess], raw: Any, s3_bucket: str, proxy: FaultProxy
) -> None:
    server = s3_weft(max_pending_bytes=2 * SEG)
    data = pattern(4 * SEG, seed=9)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        proxy.down = True
        status, body = produce_until_refused(server.port, "held", data)
        assert status == 201  # created before the body ran into the limit
        assert "max_pending_bytes" in str(body["error"])
        # Two full segments wait for the bucket (the append that filled the second
        # went on into the third); every append after that was refused.
        held = info(client, "held")
        size = int(str(held["size"]))
        assert held["state"] == "live" and 2 * SEG <= size < 3 * SEG
        assert get_bytes(client, "held") == data[:size]  # reads from local disk work
        ready = assert_json_error(client.get("/readyz"), 503)
        assert "S3" in ready
        wait_until_resumable(client, "held", size)
        refused = client.patch("/stream/held", headers={"Upload-Offset": str(size)}, content=b"x")
        assert "max_pending_bytes" in assert_json_error(refused, 503)
        assert info(client, "held")["size"] == size
        assert objects(raw, s3_bucket) == {}

        proxy.down = False  # back: the uploads resume by themselves
        wait_for(lambda: len(segments(raw, s3_bucket)) == 2, "the held segments uploaded")
        assert client.get("/readyz").status_code == 200
        rest = client.patch(
            "/stream/held",
            headers={"Upload-Offset": str(size), "Upload-Complete": "?1"},
            content=data[size:],
        )
        assert rest.status_code == 204, rest.text
        done = info(client, "held")
        assert (done["state"], done["sha256"]) == ("complete", sha256_hex(data))
        wait_for(lambda: len(segments(raw, s3_bucket)) == 4, "every segment uploaded")
        assert client.get("/stream/held").content == data


def test_uploads_pending_at_a_restart_are_made_by_the_next_start(
    s3_weft: Callable[..., ServerProcess], raw: Any, s3_bucket: str, proxy: FaultProxy
) -> None:
    server = s3_weft()
    data = pattern(2 * SEG + 777, seed=10)
    proxy.down = True
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/stream/later", content=data).status_code == 201
        assert client.get("/stream/later").content == data  # all still local
    server.kill()  # uploads were retrying: nothing is in the bucket
    assert objects(raw, s3_bucket) == {}

    proxy.down = False
    server.start()
    want = [("00000000", SEG), ("00000001", SEG), ("00000002", 777)]
    wait_for(lambda: segments(raw, s3_bucket) == want, "the pending uploads")
    wait_for(lambda: local_bytes(server) < 64 * 1024, "the local files to be evicted")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.get("/stream/later")
        assert response.status_code == 200 and response.content == data
        assert response.headers["x-stream-state"] == "complete"


def test_a_live_stream_whose_segments_are_in_the_bucket_survives_a_crash_and_resumes(
    s3_weft: Callable[..., ServerProcess], raw: Any, s3_bucket: str
) -> None:
    server = s3_weft()
    data = pattern(3 * SEG, seed=13)
    cut = 2 * SEG + 100
    with RawConnection(server.port) as producer:
        producer.send(request_head("POST", "/stream/crash", chunked=True))
        for at in range(0, cut, MiB):
            producer.send_chunk(data[at : min(at + MiB, cut)])
        wait_for(lambda: len(segments(raw, s3_bucket)) == 2, "two full segments uploaded")
        with httpx.Client(base_url=server.url, timeout=30) as client:
            wait_for(lambda: client.head("/stream/crash").headers["upload-offset"] == str(cut), "")
        wait_for(lambda: local_bytes(server) < 1 * MiB, "the full segments to leave the disk")
        server.kill()
    server.start()  # rebuilds the live stream (size, digest) from the bucket and the tail
    with httpx.Client(base_url=server.url, timeout=30) as client:
        head = client.head("/stream/crash")
        assert head.headers["x-stream-state"] == "live"
        assert head.headers["upload-offset"] == str(cut)
        rest = client.patch(
            "/stream/crash",
            headers={"Upload-Offset": str(cut), "Upload-Complete": "?1"},
            content=data[cut:],
        )
        assert rest.status_code == 204, rest.text
        done = info(client, "crash")
        assert (done["state"], done["sha256"]) == ("complete", sha256_hex(data))
        assert client.get("/stream/crash").content == data
    wait_for(lambda: len(segments(raw, s3_bucket)) == 3, "the last segment uploaded")


def test_weft_verify_checks_the_objects_and_leaves_the_server_alone(
    s3_weft: Callable[..., ServerProcess], raw: Any, s3_bucket: str
) -> None:
    server = s3_weft(cache_bytes=64 * MiB)  # the server keeps its copies on disk
    data = pattern(SEG + 10, seed=14)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/stream/checked", content=data).status_code == 201
        wait_for(lambda: len(segments(raw, s3_bucket)) == 2, "both segments uploaded")
        cached = local_bytes(server)
        assert cached > SEG
        assert verify(server).returncode == 0
        assert local_bytes(server) == cached  # verify neither evicted nor uploaded anything
        name = next(k for k in objects(raw, s3_bucket) if k.endswith("/00000000"))
        bad = bytearray(data[:SEG])
        bad[SEG // 2] ^= 0x20
        raw.put_object(Bucket=s3_bucket, Key=PREFIX + name, Body=bytes(bad))
        found = verify(server)
        assert found.returncode != 0
        assert found.stdout.startswith("checked: ")
        assert client.get("/stream/checked").content == data  # the server's cached copy


def test_reads_that_need_the_bucket_get_503_while_it_is_down(
    s3_weft: Callable[..., ServerProcess], raw: Any, s3_bucket: str, proxy: FaultProxy
) -> None:
    server = s3_weft()
    data = pattern(SEG + 10, seed=12)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/stream/away", content=data).status_code == 201
        wait_for(lambda: len(segments(raw, s3_bucket)) == 2, "both segments uploaded")
        wait_for(lambda: local_bytes(server) < 64 * 1024, "the local files to be evicted")
        proxy.down = True
        assert "object store" in assert_json_error(client.get("/stream/away"), 503)
        ranged = client.get("/stream/away", headers={"Range": "bytes=5-9"})
        assert_json_error(ranged, 503)
        assert client.head("/stream/away").status_code == 200  # no bytes needed
        assert client.get("/streams/away").json()["size"] == len(data)
        proxy.down = False
        assert client.get("/stream/away").content == data


def test_deleting_while_the_bucket_is_down_removes_the_objects_once_it_is_back(
    s3_weft: Callable[..., ServerProcess], raw: Any, s3_bucket: str, proxy: FaultProxy
) -> None:
    server = s3_weft()
    data = pattern(SEG + 10, seed=11)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/stream/gone", content=data).status_code == 201
        wait_for(lambda: len(segments(raw, s3_bucket)) == 2, "both segments uploaded")
        proxy.down = True
        assert client.delete("/stream/gone").status_code == 204
        assert client.get("/stream/gone").status_code == 404
        assert len(segments(raw, s3_bucket)) == 2
        proxy.down = False
        wait_for(lambda: objects(raw, s3_bucket) == {}, "the objects to go")


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"s3": {"part_bytes": 1024}}, "s3.part_bytes"),
        ({"s3": {"nonsense": 1}}, "s3.nonsense"),
        ({"s3": {"max_pending_bytes": 0}}, "s3.max_pending_bytes"),
        ({"segment_bytes": 1 << 20}, "segment_bytes"),
        ({"store_url": "s3://No_Such/p"}, "store_url"),
    ],
)
def test_bad_s3_settings_stop_the_start_naming_the_key(
    tmp_path: Path, values: dict[str, Any], key: str
) -> None:
    config = {"data_dir": str(tmp_path / "data"), "store_url": "s3://bucket/p", **values}
    config["s3"] = {"secret_access_key": "hunter2", **config.get("s3", {})}
    result = run_app(tmp_path, "--config", str(write_config(tmp_path, config)), "--port", "0")
    assert result.returncode == 2
    assert f"'{key}'" in result.stderr
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr
