"""Integrity (SPEC §8): corruption on disk is never served as content, recovery
trims a live stream at its first bad block, and ``weft verify`` finds it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.e2e.helpers import (
    RawConnection,
    get_bytes,
    make_dropped_stream,
    request_head,
    sha256_hex,
    unique_id,
    upload_offset,
    wait_for,
)
from tests.server import ServerProcess

BLOCK = 64 * 1024
SIZE = 300_000  # four full blocks and a partial fifth


def segment_file(server: ServerProcess, data: bytes, index: int = 0) -> Path:
    """The segment file that holds exactly data (each stream has its own directory)."""
    root = Path(server.config["data_dir"]) / "segments"
    for directory in root.iterdir():
        path = directory / f"{index:08d}"
        if path.exists() and path.read_bytes() == data:
            return path
    raise AssertionError("no segment holds those bytes")


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x01]))


def raw_get(
    server: ServerProcess, path: str, headers: dict[str, str] | None = None
) -> tuple[int, int, bytes]:
    """GET on a raw socket: (status, Content-Length, every body byte until the server closes)."""
    with RawConnection(server.port) as conn:
        conn.send(request_head("GET", path, {"Connection": "close", **(headers or {})}))
        head = conn.read_head()
        length = head.header("content-length")
        assert length is not None, head
        return head.status, int(length), conn.read_until_close()


def corrupt_metric(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("weft_corrupt_blocks_total "):
            return float(line.split()[1])
    raise AssertionError("weft_corrupt_blocks_total is not in /metrics")


def log_lines(server: ServerProcess, needle: str) -> list[str]:
    return [line for line in server.log if needle in line]


def verify(server: ServerProcess, *ids: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "verify",
            "--config",
            str(server.workdir / "config.yaml"),
            *ids,
        ],
        cwd=server.workdir,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_flipped_byte_cuts_the_response_before_its_block(
    server: ServerProcess, client: httpx.Client
) -> None:
    stream_id = unique_id("flip")
    data = os.urandom(SIZE)
    assert client.post(f"/stream/{stream_id}", content=data).status_code == 201
    flip_byte(segment_file(server, data), 3 * BLOCK + 1000)

    status, length, body = raw_get(server, f"/stream/{stream_id}")
    assert (status, length) == (200, SIZE)
    assert body == data[: 3 * BLOCK]  # every good block before it, then the connection closes

    lines = wait_for(lambda: log_lines(server, "corrupt_block"), "the corrupt_block log line")
    assert len(lines) == 1
    assert "WARNING" in lines[0]
    assert f"stream_id={stream_id} segment=0 block=3 offset={3 * BLOCK}" in lines[0]
    assert corrupt_metric(client) == 1
    assert not log_lines(server, "Traceback") and not log_lines(server, "Exception in ASGI")

    # A range that starts in the bad block gets none of it; one before it is whole.
    status, length, body = raw_get(
        server, f"/stream/{stream_id}", {"Range": f"bytes={3 * BLOCK + 10}-{3 * BLOCK + 99}"}
    )
    assert (status, length, body) == (206, 90, b"")
    early = client.get(f"/stream/{stream_id}", headers={"Range": "bytes=1000-1999"})
    assert early.status_code == 206 and early.content == data[1000:2000]
    assert corrupt_metric(client) == 2


def test_a_truncated_segment_cuts_the_response_early(
    server: ServerProcess, client: httpx.Client
) -> None:
    stream_id = unique_id("short")
    data = os.urandom(SIZE)
    assert client.post(f"/stream/{stream_id}", content=data).status_code == 201
    os.truncate(segment_file(server, data), 250_000)

    status, length, body = raw_get(server, f"/stream/{stream_id}")
    assert (status, length) == (200, SIZE)
    assert body == data[: 3 * BLOCK]  # block 3 is the one the file ends in
    line = wait_for(lambda: log_lines(server, "corrupt_block"), "the corrupt_block log line")[0]
    assert f"stream_id={stream_id} segment=0 block=3" in line
    assert corrupt_metric(client) == 1
    assert not log_lines(server, "Traceback")


def test_a_segment_without_checksums_is_served_unverified(
    server: ServerProcess, client: httpx.Client
) -> None:
    """Streams written before checksums existed have no sidecar: still served."""
    stream_id = unique_id("old")
    data = os.urandom(SIZE)
    assert client.post(f"/stream/{stream_id}", content=data).status_code == 201
    path = segment_file(server, data)
    Path(f"{path}.crc").unlink()
    response = client.get(f"/stream/{stream_id}")
    assert response.status_code == 200 and response.content == data
    assert corrupt_metric(client) == 0


def test_recovery_drops_garbage_appended_to_a_live_stream(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory()
    stream_id = unique_id("garbage")
    data = os.urandom(SIZE)
    first = 100_000
    with httpx.Client(base_url=server.url, timeout=10) as http:
        make_dropped_stream(http, server.port, stream_id, data[:first])
    server.kill()
    path = segment_file(server, data[:first])
    with path.open("ab") as file:
        file.write(os.urandom(70_000))  # past the end of the block the stream ends in
    server.start()

    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert upload_offset(http, stream_id) == first
        assert path.stat().st_size == first
        assert get_bytes(http, stream_id) == data[:first]
        assert log_lines(server, f"stream_trimmed stream_id={stream_id} size={first}")
        resumed = http.patch(
            f"/stream/{stream_id}",
            content=data[first:],
            headers={"Upload-Offset": str(first), "Upload-Complete": "?1"},
        )
        assert resumed.status_code == 204, resumed.text
        info = http.get(f"/streams/{stream_id}").json()
        assert info["sha256"] == sha256_hex(data)
        assert http.get(f"/stream/{stream_id}").content == data
    assert verify(server, stream_id).returncode == 0


def test_recovery_trims_a_live_stream_at_its_first_bad_block(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(segment_bytes=2 * BLOCK)  # the stream spans three segments
    stream_id = unique_id("bad-live")
    data = os.urandom(SIZE)
    first = 5 * BLOCK + 123
    with httpx.Client(base_url=server.url, timeout=10) as http:
        make_dropped_stream(http, server.port, stream_id, data[:first])
    server.kill()
    second = data[2 * BLOCK : 4 * BLOCK]
    flip_byte(segment_file(server, second, index=1), BLOCK + 5)  # stream block 3
    server.start()

    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert upload_offset(http, stream_id) == 3 * BLOCK
        assert corrupt_metric(http) == 1
        line = log_lines(server, "corrupt_block")[0]
        assert f"stream_id={stream_id} segment=1 block=1 offset={3 * BLOCK}" in line
        assert "during=recovery" in line
        refused = http.patch(
            f"/stream/{stream_id}", content=b"x", headers={"Upload-Offset": str(first)}
        )
        assert refused.status_code == 409
        assert refused.headers["upload-offset"] == str(3 * BLOCK)
        resumed = http.patch(
            f"/stream/{stream_id}",
            content=data[3 * BLOCK :],
            headers={"Upload-Offset": str(3 * BLOCK), "Upload-Complete": "?1"},
        )
        assert resumed.status_code == 204, resumed.text
        assert http.get(f"/streams/{stream_id}").json()["sha256"] == sha256_hex(data)
        assert http.get(f"/stream/{stream_id}").content == data


def test_verify_names_each_bad_stream_and_exits_non_zero(
    server: ServerProcess, client: httpx.Client
) -> None:
    good, flipped, short = unique_id("good"), unique_id("flipped"), unique_id("short")
    contents = {name: os.urandom(SIZE) for name in (good, flipped, short)}
    for name, data in contents.items():
        assert client.post(f"/stream/{name}", content=data).status_code == 201
    make_dropped_stream(client, server.port, unique_id("live"), contents[good][:70_000])

    clean = verify(server)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout == ""
    assert "4 streams checked, 0 bad" in clean.stderr

    flip_byte(segment_file(server, contents[flipped]), 10)
    # Cut at a block boundary: the blocks left are whole, the checksums miss the rest.
    os.truncate(segment_file(server, contents[short]), 2 * BLOCK)

    bad = verify(server)
    assert bad.returncode == 1
    assert sorted(bad.stdout.splitlines()) == sorted(
        [
            f"{flipped}: block 0 of segment 0 at offset 0: checksum mismatch",
            f"{short}: block 2 of segment 0 at offset {2 * BLOCK}: shorter than its checksums say",
        ]
    )
    assert "4 streams checked, 2 bad" in bad.stderr
    assert verify(server, good).returncode == 0
    missing = verify(server, good, "no-such-stream")
    assert missing.returncode == 1
    assert missing.stdout == "no-such-stream: no such stream\n"
