"""Resuming a producer: HEAD Upload-Offset and PATCH /stream/{id} (SPEC §4, §1 crash)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.e2e.helpers import (
    RawConnection,
    assert_json_error,
    get_bytes,
    make_dropped_stream,
    module_server,
    numbered_lines,
    open_producer,
    request_head,
    sha256_hex,
    unique_id,
    upload_offset,
    wait_for_offset,
    wait_until_resumable,
)
from tests.server import ServerProcess

BASE = b"first part, stored before the drop\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory.mktemp("resume"))


@pytest.fixture
def dropped(server: ServerProcess, client: httpx.Client) -> str:
    """A live stream holding BASE whose producer went away and was let go."""
    stream_id = unique_id("resume")
    make_dropped_stream(client, server.port, stream_id, BASE)
    wait_until_resumable(client, stream_id, len(BASE))
    return stream_id


def patch(
    client: httpx.Client,
    stream_id: str,
    offset: str | bytes | None,
    body: bytes,
    **extra: str,
) -> httpx.Response:
    headers: dict[str, str | bytes] = dict(extra)
    if offset is not None:
        headers["Upload-Offset"] = offset
    return client.patch(f"/stream/{stream_id}", content=body, headers=headers)


def assert_unchanged(client: httpx.Client, stream_id: str, data: bytes, state: str) -> None:
    head = client.head(f"/stream/{stream_id}")
    assert head.status_code == 200
    assert head.headers["upload-offset"] == str(len(data))
    assert head.headers["x-stream-state"] == state
    assert get_bytes(client, stream_id) == data


def test_head_reports_stored_size_as_upload_offset(client: httpx.Client, dropped: str) -> None:
    head = client.head(f"/stream/{dropped}")
    assert head.status_code == 200
    assert head.headers["upload-offset"] == str(len(BASE))
    assert head.headers["x-stream-state"] == "live"


def test_patch_at_current_offset_appends_and_returns_new_offset(
    client: httpx.Client, dropped: str
) -> None:
    response = patch(client, dropped, str(len(BASE)), b"second part\n")
    assert response.status_code == 204
    assert response.headers["upload-offset"] == str(len(BASE) + 12)
    assert response.content == b""
    assert_unchanged(client, dropped, BASE + b"second part\n", "live")
    chunked = client.patch(
        f"/stream/{dropped}",
        headers={"Upload-Offset": str(len(BASE) + 12)},
        content=iter([b"third ", b"part\n"]),
    )
    assert chunked.status_code == 204
    assert chunked.headers["upload-offset"] == str(len(BASE) + 23)
    assert_unchanged(client, dropped, BASE + b"second part\nthird part\n", "live")


@pytest.mark.parametrize("delta", [-1, 1, -len(BASE)])
def test_patch_at_wrong_offset_is_409_with_current_offset_and_changes_nothing(
    client: httpx.Client, dropped: str, delta: int
) -> None:
    response = patch(client, dropped, str(len(BASE) + delta), b"misplaced")
    assert_json_error(response, 409)
    assert response.headers["upload-offset"] == str(len(BASE))
    assert_unchanged(client, dropped, BASE, "live")


@pytest.mark.parametrize(
    "offset",
    [
        pytest.param("-1", id="negative"),
        pytest.param("abc", id="non-numeric"),
        pytest.param("", id="empty"),
        pytest.param("1.5", id="fraction"),
        pytest.param("0x10", id="hex"),
        pytest.param("9" * 40, id="huge"),
        pytest.param(b"\xb3", id="superscript-three"),
    ],
)
def test_patch_with_invalid_offset_is_4xx_json_and_changes_nothing(
    client: httpx.Client, dropped: str, offset: str | bytes
) -> None:
    response = patch(client, dropped, offset, b"should not land")
    assert 400 <= response.status_code < 500, response.status_code
    assert_json_error(response, response.status_code)
    assert_unchanged(client, dropped, BASE, "live")


def test_patch_without_upload_offset_is_400_and_changes_nothing(
    client: httpx.Client, dropped: str
) -> None:
    assert_json_error(patch(client, dropped, None, b"no offset"), 400)
    assert_unchanged(client, dropped, BASE, "live")


def test_patch_on_complete_stream_is_409_json_and_changes_nothing(client: httpx.Client) -> None:
    stream_id = unique_id("complete")
    assert client.post(f"/stream/{stream_id}", content=b"done").status_code == 201
    assert_json_error(patch(client, stream_id, "4", b"more"), 409)
    assert_unchanged(client, stream_id, b"done", "complete")


def test_patch_on_missing_stream_is_404(client: httpx.Client) -> None:
    stream_id = unique_id("missing")
    message = assert_json_error(patch(client, stream_id, "0", b"x"), 404)
    assert message == f"The stream with ID {stream_id} does not exist"
    assert client.get(f"/stream/{stream_id}").status_code == 404


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("a" * 201, id="201-chars"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param("dollar$sign", id="dollar"),
    ],
)
def test_patch_with_bad_id_is_400(client: httpx.Client, bad: str) -> None:
    assert_json_error(patch(client, bad, "0", b"x"), 400)


@pytest.mark.parametrize("last", [b"the final words\n", b""], ids=["with-body", "empty-body"])
def test_patch_with_upload_complete_completes_stream_with_right_digest(
    client: httpx.Client, dropped: str, last: bytes
) -> None:
    full = BASE + last
    response = patch(client, dropped, str(len(BASE)), last, **{"Upload-Complete": "?1"})
    assert response.status_code == 204
    assert response.headers["upload-offset"] == str(len(full))
    read = client.get(f"/stream/{dropped}")
    assert read.content == full
    assert read.headers["x-stream-state"] == "complete"
    assert read.headers["etag"] == f'"{sha256_hex(full)}"'
    info = client.get(f"/streams/{dropped}").json()
    assert info["state"] == "complete"
    assert (info["size"], info["sha256"]) == (len(full), sha256_hex(full))
    assert_json_error(patch(client, dropped, str(len(full)), b"after"), 409)


def test_patch_while_another_patch_is_writing_is_409_and_bytes_are_not_mixed(
    server: ServerProcess, client: httpx.Client, dropped: str
) -> None:
    with RawConnection(server.port) as first:
        first.send(
            request_head(
                "PATCH", f"/stream/{dropped}", {"Upload-Offset": str(len(BASE))}, chunked=True
            )
        )
        first.send_chunk(b"AAAA")
        wait_for_offset(client, dropped, len(BASE) + 4)  # the first PATCH holds the stream
        second = patch(client, dropped, str(len(BASE)), b"BBBB")
        assert_json_error(second, 409)
        first.send_chunk(b"AAAA")
        first.end_chunks()
        response = first.read_head()
        assert response.status == 204
        assert response.header("upload-offset") == str(len(BASE) + 8)
    assert_unchanged(client, dropped, BASE + b"AAAAAAAA", "live")


def test_racing_patches_at_same_offset_one_wins_and_bytes_are_never_interleaved(
    server: ServerProcess, client: httpx.Client, dropped: str
) -> None:
    size = 64 * 1024
    bodies = {"A": b"A" * size, "B": b"B" * size}
    start = threading.Barrier(2)

    def race(name: str) -> tuple[str, int]:
        def pieces() -> Iterator[bytes]:
            for offset in range(0, size, 1024):
                yield bodies[name][offset : offset + 1024]

        with httpx.Client(base_url=server.url, timeout=10) as http:
            start.wait(5)
            response = http.patch(
                f"/stream/{dropped}", headers={"Upload-Offset": str(len(BASE))}, content=pieces()
            )
        return name, response.status_code

    with ThreadPoolExecutor(2) as pool:
        results = dict(future.result(30) for future in [pool.submit(race, n) for n in bodies])
    assert sorted(results.values()) == [204, 409]
    winner = next(name for name, status in results.items() if status == 204)
    assert_unchanged(client, dropped, BASE + bodies[winner], "live")


def test_dropped_producer_resumes_to_a_byte_identical_stream(
    server: ServerProcess, client: httpx.Client
) -> None:
    stream_id = unique_id("drop-resume")
    everything = numbered_lines(0, 3000)
    conn, head = open_producer(server.port, f"/stream/{stream_id}")
    with conn:
        assert head.status == 201
        conn.send_chunk(everything[:30_000])
        wait_for_offset(client, stream_id, 30_000)
    wait_until_resumable(client, stream_id, 30_000)
    offset = upload_offset(client, stream_id)
    assert offset == 30_000
    # Resume in two PATCHes, the second completing the stream.
    middle = 60_000
    response = patch(client, stream_id, str(offset), everything[offset:middle])
    assert response.status_code == 204
    assert response.headers["upload-offset"] == str(middle)
    done = patch(client, stream_id, str(middle), everything[middle:], **{"Upload-Complete": "?1"})
    assert done.status_code == 204
    assert done.headers["upload-offset"] == str(len(everything))
    read = client.get(f"/stream/{stream_id}")
    assert read.content == everything
    assert read.headers["etag"] == f'"{sha256_hex(everything)}"'


def test_server_killed_mid_stream_keeps_reported_bytes_and_resumes(
    server_factory: Callable[..., ServerProcess],
) -> None:
    crashing = server_factory()
    stream_id = unique_id("crash")
    everything = numbered_lines(0, 5000)
    reported = 0
    conn, head = open_producer(crashing.port, f"/stream/{stream_id}")
    with conn, httpx.Client(base_url=crashing.url, timeout=10) as http:
        assert head.status == 201
        for start in range(0, 100_000, 10_000):
            conn.send_chunk(everything[start : start + 10_000])
        wait_for_offset(http, stream_id, 100_000)
        reported = upload_offset(http, stream_id) or 0
        crashing.kill()
    assert reported == 100_000

    crashing.start()
    with httpx.Client(base_url=crashing.url, timeout=10) as http:
        head_after = http.head(f"/stream/{stream_id}")
        assert head_after.status_code == 200
        assert head_after.headers["x-stream-state"] == "live"
        offset = int(head_after.headers["upload-offset"])
        assert offset == reported
        assert get_bytes(http, stream_id) == everything[:offset]
        response = patch(
            http, stream_id, str(offset), everything[offset:], **{"Upload-Complete": "?1"}
        )
        assert response.status_code == 204
        assert response.headers["upload-offset"] == str(len(everything))
        read = http.get(f"/stream/{stream_id}")
        assert read.content == everything
        assert read.headers["x-stream-state"] == "complete"
        assert read.headers["etag"] == f'"{sha256_hex(everything)}"'


def test_producer_killed_by_server_crash_mid_write_resumes_from_reported_offset(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """Crash while the producer is still sending: whatever Upload-Offset says after
    the restart is a prefix of the input, and resuming from it completes the stream."""
    crashing = server_factory()
    stream_id = unique_id("crash-busy")
    everything = numbered_lines(0, 20_000)
    conn, head = open_producer(crashing.port, f"/stream/{stream_id}")
    with conn, httpx.Client(base_url=crashing.url, timeout=10) as http:
        assert head.status == 201
        conn.send_chunk(everything[:50_000])
        wait_for_offset(http, stream_id, 50_000)
        before = upload_offset(http, stream_id) or 0
        try:
            for start in range(50_000, 400_000, 25_000):
                conn.send_chunk(everything[start : start + 25_000])
        except OSError:
            pass
        crashing.kill()

    crashing.start()
    with httpx.Client(base_url=crashing.url, timeout=10) as http:
        offset = upload_offset(http, stream_id)
        assert offset is not None and before <= offset <= 400_000
        assert get_bytes(http, stream_id) == everything[:offset]
        response = patch(
            http, stream_id, str(offset), everything[offset:], **{"Upload-Complete": "?1"}
        )
        assert response.status_code == 204
        read = http.get(f"/stream/{stream_id}")
        assert read.content == everything
        assert read.headers["etag"] == f'"{sha256_hex(everything)}"'


def test_patch_with_wrong_offset_on_a_limited_server_is_409_before_413(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    for limited in module_server(tmp_path_factory.mktemp("limited"), limits={"stream_bytes": 100}):
        with httpx.Client(base_url=limited.url, timeout=10) as http:
            stream_id = unique_id("limited")
            make_dropped_stream(http, limited.port, stream_id, b"0123456789")
            wait_until_resumable(http, stream_id, 10)
            wrong = patch(http, stream_id, "999999", b"x" * 200)
            assert wrong.status_code == 409
            assert wrong.headers["upload-offset"] == "10"
            too_big = patch(http, stream_id, "10", b"x" * 200)
            assert_json_error(too_big, 413)
            assert_unchanged(http, stream_id, b"0123456789", "live")
