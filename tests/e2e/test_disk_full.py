"""A full disk (SPEC §2 Limits, §7; issue 9 items 2 and 3).

The data directory sits on a real 50 MiB tmpfs mounted for the test (needs
root; skipped with the reason where mounting is not permitted). Producers stop
at the free-space limit or at ENOSPC with their stream live and resumable; new
streams and appends get 507; DELETE, reads and a retried completion work.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import (
    RawConnection,
    assert_json_error,
    get_bytes,
    request_head,
    sha256_hex,
    wait_for_offset,
    wait_until_resumable,
)
from tests.server import ServerProcess

MiB = 1024 * 1024
DISK = 50 * MiB
TUS = {"Tus-Resumable": "1.0.0"}


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes that differ at every offset, so a lost or repeated chunk shows."""
    block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    return (block * (size // MiB + 1))[:size]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh 50 MiB tmpfs, unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs for a small data directory needs root and mount(8)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def disk_server(small_disk: Path, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers whose data_dir is on the small disk (stopped before it is unmounted)."""
    started: list[ServerProcess] = []

    def start(**config: object) -> ServerProcess:
        workdir = tmp_path / f"server{len(started)}"
        workdir.mkdir()
        config = {"data_dir": str(small_disk / "data"), **config}
        server = ServerProcess(workdir, config).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    for server in started:  # a full disk is an expected condition, never a 500
        crashes = [line for line in server.log if "Traceback" in line or "status=500" in line]
        assert crashes == []


def produce_until_refused(port: int, stream_id: str, data: bytes) -> tuple[int, dict[str, object]]:
    """POST data chunked from a thread while reading the response; return the
    status and the JSON body that ends it (the server stops the body early)."""
    conn = RawConnection(port, timeout=30)
    stop = threading.Event()

    def send() -> None:
        view = memoryview(data)
        try:
            for start in range(0, len(data), MiB):
                if stop.is_set():
                    return
                conn.send_chunk(bytes(view[start : start + MiB]))
            conn.end_chunks()
        except OSError:
            pass  # the server closed the connection after its answer

    with conn:
        conn.send(request_head("POST", f"/stream/{stream_id}", chunked=True))
        head = conn.read_head()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            body = conn.read_body(head)
        finally:
            stop.set()
        sender.join(30)
    return head.status, json.loads(body)


def info(client: httpx.Client, stream_id: str) -> dict[str, object]:
    response = client.get(f"/streams/{stream_id}")
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


def test_producer_stops_at_min_free_bytes_then_507_until_a_delete_frees_space(
    disk_server: Callable[..., ServerProcess],
) -> None:
    server = disk_server(limits={"min_free_bytes": 8 * MiB})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        kept = pattern(3 * MiB, seed=1)
        assert client.post("/stream/kept", content=kept).status_code == 201
        filler = pattern(10 * MiB, seed=2)
        assert client.post("/stream/filler", content=filler).status_code == 201
        tus = client.post("/files/", headers={**TUS, "Upload-Length": str(MiB)})
        assert tus.status_code == 201, tus.text
        upload = tus.headers["location"]

        big = pattern(100 * MiB, seed=3)
        status, body = produce_until_refused(server.port, "big", big)
        assert status == 201
        assert list(body) == ["error"] and "space" in str(body["error"])
        stored = info(client, "big")
        assert stored["state"] == "live"
        size = int(str(stored["size"]))
        assert 10 * MiB < size < DISK
        assert get_bytes(client, "big") == big[:size]  # every stored byte, nothing else

        # Below the limit: new streams and appends get 507 JSON, and nothing changes.
        assert_json_error(client.post("/stream/new", content=b"x"), 507)
        assert_json_error(client.post("/stream", content=b"x"), 507)
        wait_until_resumable(client, "big", size)
        patch = client.patch("/stream/big", headers={"Upload-Offset": str(size)}, content=b"more")
        assert_json_error(patch, 507)
        assert_json_error(client.post("/files/", headers={**TUS, "Upload-Length": "5"}), 507)
        tus_patch = client.patch(
            upload,
            headers={
                **TUS,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
            content=b"abc",
        )
        assert_json_error(tus_patch, 507)
        assert info(client, "big")["size"] == size
        assert client.get("/stream/new").status_code == 404

        # Reads keep working.
        read = client.get("/stream/kept")
        assert read.status_code == 200 and read.content == kept
        assert read.headers["etag"] == f'"{sha256_hex(kept)}"'

        # A DELETE frees space; then the live stream resumes and completes.
        assert client.delete("/stream/filler").status_code == 204
        assert client.get("/stream/filler").status_code == 404
        rest = pattern(MiB, seed=4)
        resumed = client.patch(
            "/stream/big",
            headers={"Upload-Offset": str(size), "Upload-Complete": "?1"},
            content=rest,
        )
        assert resumed.status_code == 204, resumed.text
        assert resumed.headers["upload-offset"] == str(size + len(rest))
        done = info(client, "big")
        assert done["state"] == "complete"
        assert done["sha256"] == sha256_hex(big[:size] + rest)

        # Deleting the big stream makes room for new streams again.
        assert client.delete("/stream/big").status_code == 204
        fresh = client.post("/stream/fresh", content=b"hello")
        assert fresh.status_code == 201 and fresh.json()["size"] == 5


@pytest.mark.sqlite_only  # the database fills up with the disk only when it is on it
def test_completely_full_disk_delete_and_reads_work_and_a_failed_completion_retries(
    disk_server: Callable[..., ServerProcess], small_disk: Path
) -> None:
    server = disk_server(limits={"min_free_bytes": 0})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        finished = pattern(2 * MiB, seed=5)
        assert client.post("/stream/finished", content=finished).status_code == 201
        content = pattern(MiB, seed=6)
        # "live" holds 1 MiB; its producer went away and will finish it later.
        conn = RawConnection(server.port)
        with conn:
            conn.send(request_head("POST", "/stream/live", chunked=True))
            assert conn.read_head().status == 201
            conn.send_chunk(content)
            wait_for_offset(client, "live", MiB)
        wait_until_resumable(client, "live", MiB)

        # Fill the disk to the last byte through Weft itself.
        status, body = produce_until_refused(server.port, "hog", pattern(100 * MiB, seed=7))
        assert status == 201 and list(body) == ["error"]
        assert shutil.disk_usage(small_disk).free < MiB

        # The completing PATCH cannot be recorded: 503/507, and the stream is as before.
        completing = {"Upload-Offset": str(MiB), "Upload-Complete": "?1"}
        failed = client.patch("/stream/live", headers=completing)
        assert failed.status_code in (503, 507), failed.text
        assert_json_error(failed, failed.status_code)
        now = info(client, "live")
        assert (now["state"], now["size"], now["sha256"]) == ("live", MiB, None)

        # With the free-space check off, the full disk itself refuses new streams: 507.
        assert_json_error(client.post("/stream/new", content=b"x"), 507)
        assert_json_error(client.post("/files/", headers={**TUS, "Upload-Length": "5"}), 507)
        assert client.get("/stream/new").status_code == 404

        # Reads work on the full disk.
        read = client.get("/stream/finished")
        assert read.status_code == 200 and read.content == finished
        assert get_bytes(client, "live") == content

        # DELETE works on the full disk and frees the space.
        assert client.delete("/stream/hog").status_code == 204
        assert client.get("/stream/hog").status_code == 404
        assert shutil.disk_usage(small_disk).free > 40 * MiB

        # The same completing PATCH again: complete, with the right size and digest.
        retry = client.patch("/stream/live", headers=completing)
        assert retry.status_code == 204, retry.text
        assert retry.headers["upload-offset"] == str(MiB)
        done = info(client, "live")
        assert (done["state"], done["size"], done["sha256"]) == (
            "complete",
            MiB,
            sha256_hex(content),
        )
        assert get_bytes(client, "live") == content
        assert client.post("/stream/after", content=b"ok").status_code == 201
    assert any("delete_used_space_reserve stream_id=hog" in line for line in server.log)


def test_server_restarted_on_a_full_disk_recovers_and_serves_reads_and_deletes(
    disk_server: Callable[..., ServerProcess], small_disk: Path
) -> None:
    server = disk_server(limits={"min_free_bytes": 0})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        finished = pattern(MiB, seed=8)
        assert client.post("/stream/finished", content=finished).status_code == 201
        status, body = produce_until_refused(server.port, "hog", pattern(100 * MiB, seed=9))
        assert status == 201 and list(body) == ["error"]
        stored = info(client, "hog")["size"]
        assert shutil.disk_usage(small_disk).free < MiB

        server.restart()  # recovery of the live "hog" must write its row on the full disk
        read = client.get("/stream/finished")
        assert read.status_code == 200 and read.content == finished
        recovered = info(client, "hog")
        assert (recovered["state"], recovered["size"]) == ("live", stored)
        assert client.delete("/stream/hog").status_code == 204
        assert client.post("/stream/after", content=b"ok").status_code == 201


def test_min_free_bytes_above_the_free_space_refuses_writes_but_reads_and_deletes_work(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.post("/stream/old", content=b"old bytes").status_code == 201
            conn = RawConnection(server.port)
            with conn:
                conn.send(request_head("POST", "/stream/open", chunked=True))
                assert conn.read_head().status == 201
                conn.send_chunk(b"abc")
                wait_for_offset(client, "open", 3)
        server.config["limits"] = {"min_free_bytes": shutil.disk_usage(tmp_path).free * 4}
        server.restart()
        with httpx.Client(base_url=server.url, timeout=10) as client:
            message = assert_json_error(client.post("/stream/new", content=b"x"), 507)
            assert "/" not in message.replace("limits.min_free_bytes", "")  # no path leaked
            assert_json_error(client.post("/files/", headers={**TUS, "Upload-Length": "1"}), 507)
            patch = client.patch("/stream/open", headers={"Upload-Offset": "3"}, content=b"def")
            assert_json_error(patch, 507)
            assert get_bytes(client, "open") == b"abc"
            # A completion without new bytes is no append: it is allowed.
            done = client.patch(
                "/stream/open", headers={"Upload-Offset": "3", "Upload-Complete": "?1"}
            )
            assert done.status_code == 204 and done.headers["upload-offset"] == "3"
            read = client.get("/stream/old")
            assert read.status_code == 200 and read.content == b"old bytes"
            assert client.delete("/stream/old").status_code == 204
            assert client.get("/stream/old").status_code == 404
    finally:
        server.stop()
