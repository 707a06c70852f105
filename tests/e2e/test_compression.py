"""Compression at rest and Content-Encoding of replays (issue 12), with a real
server: the content, its digest, sizes, Range and ?offset are those of the
uncompressed bytes whatever the store holds; stored_bytes says what it holds."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import zstandard

from app.storage.frames import FRAME, TEMP, read_index, read_range
from app.storage.packed import decompress_segment
from tests.e2e.helpers import (
    finish_producer,
    module_server,
    open_producer,
    repr_digest,
    sha256_hex,
    unique_id,
    wait_for,
)
from tests.server import ServerProcess
from tests.unit.test_frames import log_like

SEGMENT = FRAME + 4096  # segment and frame boundaries fall apart


@pytest.fixture(scope="module")
def zserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("zstd")
    yield from module_server(workdir, compression="zstd", segment_bytes=SEGMENT)


@pytest.fixture
def zclient(zserver: ServerProcess) -> Iterator[httpx.Client]:
    # Not httpx's default (which asks for zstd): the plain content unless a test asks.
    with httpx.Client(
        base_url=zserver.url, timeout=10, headers={"Accept-Encoding": "identity"}
    ) as http:
        yield http


def post(http: httpx.Client, stream_id: str, data: bytes) -> dict[str, object]:
    response = http.post(f"/stream/{stream_id}", content=data)
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    assert body["sha256"] == sha256_hex(data) and body["size"] == len(data)
    return body


def stored_bytes(http: httpx.Client, stream_id: str) -> int:
    response = http.get(f"/streams/{stream_id}")
    assert response.status_code == 200, response.text
    value: int = response.json()["stored_bytes"]
    return value


def wait_compressed(http: httpx.Client, stream_id: str, below: int) -> int:
    return wait_for(
        lambda: (n := stored_bytes(http, stream_id)) < below and n, f"{stream_id} compressed"
    )


def segment_files(server: ServerProcess) -> list[Path]:
    return sorted((server.workdir / "data" / "segments").glob("*/*"))


def stream_dir(server: ServerProcess, data: bytes) -> Path:
    """The directory of the stream whose compressed segment 1 holds data[SEGMENT:]."""
    for path in segment_files(server):
        if path.name != "00000001.zst":
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            index = read_index(fd)
            if read_range(fd, index, 0, index.size) == data[SEGMENT:]:
                return path.parent
        finally:
            os.close(fd)
    raise AssertionError("no such stream on disk")


def raw_get(http: httpx.Client, path: str, **headers: str) -> tuple[httpx.Response, bytes]:
    with http.stream("GET", path, headers=headers) as response:
        return response, b"".join(response.iter_raw())


def test_finished_log_is_stored_compressed_and_reads_back_unchanged(
    zclient: httpx.Client,
) -> None:
    data = log_like(3 * SEGMENT + 12345)
    stream_id = unique_id("zlog")
    post(zclient, stream_id, data)
    stored = wait_compressed(zclient, stream_id, len(data) // 4)
    assert stored > 0
    whole = zclient.get(f"/stream/{stream_id}")
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-length"] == str(len(data))
    assert whole.headers["repr-digest"] == repr_digest(data)
    assert whole.headers["vary"] == "Accept-Encoding"
    assert "content-encoding" not in whole.headers
    head = zclient.head(f"/stream/{stream_id}")
    assert head.headers["upload-offset"] == str(len(data))
    assert head.headers["content-length"] == str(len(data))
    for first, last in [(FRAME - 10, FRAME + 10), (SEGMENT - 1, 2 * SEGMENT + 5), (0, 0)]:
        part = zclient.get(f"/stream/{stream_id}", headers={"Range": f"bytes={first}-{last}"})
        assert part.status_code == 206 and part.content == data[first : last + 1]
        assert part.headers["content-range"] == f"bytes {first}-{last}/{len(data)}"
    suffix = zclient.get(f"/stream/{stream_id}", headers={"Range": "bytes=-100"})
    assert suffix.status_code == 206 and suffix.content == data[-100:]
    for offset in (1, SEGMENT + 3, len(data) - 1, len(data)):
        tail = zclient.get(f"/stream/{stream_id}", params={"offset": offset})
        assert tail.status_code == 200 and tail.content == data[offset:]
        assert tail.headers["x-stream-offset"] == str(offset)
    info = zclient.get(f"/streams/{stream_id}").json()
    assert info["size"] == len(data) and info["sha256"] == sha256_hex(data)


def test_random_bytes_do_not_grow_at_rest(zserver: ServerProcess, zclient: httpx.Client) -> None:
    data = os.urandom(2 * SEGMENT + 100)
    stream_id = unique_id("zrand")
    post(zclient, stream_id, data)
    wait_for(
        lambda: (
            all(p.name.endswith(".zst") for p in segment_files(zserver) if "0000000" in p.name)
            and stored_bytes(zclient, stream_id) != len(data)
        ),
        "random stream compressed",
    )
    assert len(data) < stored_bytes(zclient, stream_id) <= len(data) + 3 * 200
    assert zclient.get(f"/stream/{stream_id}").content == data


def test_a_live_stream_keeps_its_tail_raw_and_is_never_encoded(
    zserver: ServerProcess, zclient: httpx.Client
) -> None:
    stream_id = unique_id("zlive")
    data = log_like(SEGMENT + 500)
    conn, head = open_producer(zserver.port, f"/stream/{stream_id}")
    assert head.status == 201
    with conn:
        conn.send_chunk(data)
        wait_for(lambda: stored_bytes(zclient, stream_id) < len(data), "sealed segment compressed")
        assert stored_bytes(zclient, stream_id) > 500  # the unsealed tail stays as it is
        for path in (f"/stream/{stream_id}?notail", f"/stream/{stream_id}"):
            with zclient.stream("GET", path, headers={"Accept-Encoding": "zstd"}) as response:
                assert "content-encoding" not in response.headers
                body = b""
                for piece in response.iter_raw():
                    body += piece
                    if len(body) >= len(data):
                        break
            assert body == data
        assert finish_producer(conn)["size"] == len(data)


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        ("zstd", "zstd"),
        ("gzip", "gzip"),
        ("x-gzip", "gzip"),
        ("gzip, zstd;q=0.5", "gzip"),
        ("zstd;q=0, gzip;q=0.1", "gzip"),
        ("*", "zstd"),
        ("br, GZIP;Q=1", "gzip"),
        ("zstd;q=0", None),
        ("gzip;q=0, *;q=0", None),
        ("identity", None),
        ("gzip;q=0.5, identity", None),
        ("", None),
        ("br", None),
        ("gzip;q=2", None),
    ],
)
def test_accept_encoding_gets_the_coding_asked_for(
    zclient: httpx.Client, accept: str, coding: str | None
) -> None:
    data = log_like(SEGMENT + 999, seed=11)
    stream_id = unique_id("zenc")
    post(zclient, stream_id, data)
    response, body = raw_get(zclient, f"/stream/{stream_id}", **{"Accept-Encoding": accept})
    assert response.status_code == 200
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.headers.get("content-encoding") == coding
    if coding is None:
        assert body == data and response.headers["content-length"] == str(len(data))
        return
    assert "content-length" not in response.headers
    assert "repr-digest" not in response.headers
    assert response.headers["etag"] == f'"{sha256_hex(data)}.{coding}"'
    if coding == "gzip":
        assert gzip.decompress(body) == data
    else:
        reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
        assert reader.read() == data
    assert len(body) < len(data) // 3


def test_range_and_offset_are_never_encoded(zclient: httpx.Client) -> None:
    data = log_like(SEGMENT + 999, seed=12)
    stream_id = unique_id("zrange")
    post(zclient, stream_id, data)
    response, body = raw_get(
        zclient, f"/stream/{stream_id}", **{"Accept-Encoding": "zstd", "Range": "bytes=10-99"}
    )
    assert response.status_code == 206 and body == data[10:100]
    assert "content-encoding" not in response.headers
    response, body = raw_get(
        zclient, f"/stream/{stream_id}?offset=5", **{"Accept-Encoding": "gzip"}
    )
    assert response.status_code == 200 and body == data[5:]
    assert "content-encoding" not in response.headers


def test_a_server_that_does_not_compress_never_encodes(client: httpx.Client) -> None:
    data = b"plain\n" * 1000
    stream_id = unique_id("plain")
    post(client, stream_id, data)
    info = client.get(f"/streams/{stream_id}").json()
    assert info["stored_bytes"] == len(data)  # compression: none stores as it is
    response, body = raw_get(client, f"/stream/{stream_id}", **{"Accept-Encoding": "gzip, zstd"})
    assert body == data and response.headers["content-length"] == str(len(data))
    assert "content-encoding" not in response.headers and "vary" not in response.headers


def test_restart_settles_compressions_cut_off_and_either_setting_reads_the_other(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(compression="none", segment_bytes=SEGMENT)
    data = log_like(3 * SEGMENT + 7, seed=13)
    stream_id = unique_id("zrestart")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        post(http, stream_id, data)
        assert stored_bytes(http, stream_id) == len(data)
    # On with compression: what was written without it is compressed (its
    # finish was never seen by a compressing store) and reads the same.
    server.config["compression"] = "zstd"
    server.restart()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        wait_compressed(http, stream_id, len(data) // 4)
        assert http.get(f"/stream/{stream_id}").content == data
    server.kill()
    # A crash in the middle: segment 0 in both forms, segment 1 raw with half a temp file.
    directory = next(p.parent for p in segment_files(server) if p.name == "00000000.zst")
    packed = (directory / "00000000.zst").read_bytes()
    decompress_segment(directory, 0)
    (directory / "00000000.zst").write_bytes(packed)
    decompress_segment(directory, 1)
    (directory / f"00000001{TEMP}").write_bytes(packed[:1000])
    server.start()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get(f"/stream/{stream_id}").content == data
        expected = {"00000000.zst", "00000001.zst", "00000002.zst", "00000003.zst", "finished"}
        wait_for(lambda: {p.name for p in directory.iterdir()} == expected, "settled files")
        assert http.get(f"/stream/{stream_id}").content == data
    # Off again: compressed data stays readable.
    server.config["compression"] = "none"
    server.restart()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        response = http.get(f"/stream/{stream_id}", headers={"Range": f"bytes={SEGMENT}-"})
        assert response.status_code == 206 and response.content == data[SEGMENT:]
        assert http.get(f"/stream/{stream_id}").content == data
        assert stored_bytes(http, stream_id) < len(data) // 4


def test_httpx_default_client_decodes_the_encoded_replay(zserver: ServerProcess) -> None:
    # httpx asks for zstd by default once zstandard is installed; its decoder
    # fails on a body of many frames, hence one frame per response.
    data = log_like(3 * SEGMENT, seed=14)
    stream_id = unique_id("zhttpx")
    with httpx.Client(base_url=zserver.url, timeout=10) as http:
        post(http, stream_id, data)
        wait_compressed(http, stream_id, len(data) // 4)
        response = http.get(f"/stream/{stream_id}")
        assert response.headers["content-encoding"] == "zstd"
        assert response.content == data


def test_kill_9_while_compressing_loses_nothing_and_compression_completes(
    server_factory: Callable[..., ServerProcess],
) -> None:
    big = 8 * FRAME
    server = server_factory(compression="zstd", segment_bytes=big)
    data = log_like(3 * big + 5, seed=15)
    stream_id = unique_id("zkill")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        post(http, stream_id, data)
    server.kill()  # the compressions of the last segments are under way or queued
    server.start()
    with httpx.Client(
        base_url=server.url, timeout=10, headers={"Accept-Encoding": "identity"}
    ) as http:
        got = http.get(f"/stream/{stream_id}")
        assert got.content == data and got.headers["repr-digest"] == repr_digest(data)
        wait_compressed(http, stream_id, len(data) // 4)
        want = {"00000000.zst", "00000001.zst", "00000002.zst", "00000003.zst", "finished"}
        names: set[str] = set()

        def all_compressed() -> bool:
            names.clear()
            names.update(p.name for p in segment_files(server))
            return names == want

        try:
            wait_for(all_compressed, "every segment compressed")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; at the end: {sorted(names)}") from None
        assert http.get(f"/stream/{stream_id}").content == data


def test_verify_checks_compressed_segments_and_a_bad_frame_cuts_the_read(
    zserver: ServerProcess, zclient: httpx.Client
) -> None:
    from tests.e2e.test_integrity import flip_byte, verify

    data = log_like(SEGMENT + 999, seed=16)
    stream_id = unique_id("zverify")
    post(zclient, stream_id, data)
    wait_compressed(zclient, stream_id, len(data) // 4)
    assert verify(zserver, stream_id).returncode == 0
    key_dir = stream_dir(zserver, data)
    flip_byte(key_dir / "00000000.zst", 50)
    bad = verify(zserver, stream_id)
    assert bad.returncode == 1 and bad.stdout.startswith(f"{stream_id}: block 0 of segment 0")
    with zclient.stream("GET", f"/stream/{stream_id}") as response:
        assert response.headers["content-length"] == str(len(data))
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()  # cut before its Content-Length: never a wrong whole body
