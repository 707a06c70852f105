"""app/storage/s3_objects.py against a real S3 server (SeaweedFS), with faults
injected by tests/s3/faultproxy.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest

from app.errors import ConfigError, NotFound, StorageUnavailable
from app.storage import s3_objects
from app.storage.s3_objects import READ_CONNECTIONS, S3ObjectStore, S3Settings
from tests.s3.faultproxy import FaultProxy
from tests.s3server import S3Server

MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest part: the tests' objects stay small


def settings_for(server: S3Server, endpoint_url: str | None = None, **overrides: Any) -> S3Settings:
    values: dict[str, Any] = {
        "endpoint_url": endpoint_url or server.endpoint_url,
        "region": server.region,
        "access_key_id": server.access_key_id,
        "secret_access_key": server.secret_access_key,
        "part_bytes": PART,
        "max_concurrency": 2,
        "retries": 8,
        "timeout_seconds": 5.0,
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 0.05,
    }
    values.update(overrides)
    return S3Settings(**values)


@pytest.fixture
async def store(s3_server: S3Server, s3_bucket: str) -> AsyncIterator[S3ObjectStore]:
    async with S3ObjectStore(s3_bucket, settings_for(s3_server)) as opened:
        yield opened


@pytest.fixture
def raw(s3_server: S3Server) -> Iterator[Any]:
    """A plain botocore client, to check what the store did behind its back."""
    client = botocore.session.get_session().create_client("s3", **s3_server.client_kwargs())
    yield client
    client.close()


@pytest.fixture
async def proxy(s3_server: S3Server) -> AsyncIterator[FaultProxy]:
    started = await FaultProxy(s3_server.port).start()
    yield started
    await started.close()


async def pieces(data: bytes, size: int = 100_003) -> AsyncIterator[bytes]:
    """Odd-sized pieces, so parts are cut across them."""
    for at in range(0, len(data), size):
        yield data[at : at + size]


async def read_all(store: S3ObjectStore, key: str, start: int, end: int) -> bytes:
    return b"".join([chunk async for chunk in store.get_range(key, start, end)])


@pytest.mark.parametrize("size", [0, 1, PART - 1, PART, 3 * PART + 7])
async def test_round_trip_is_byte_exact(store: S3ObjectStore, raw: Any, size: int) -> None:
    data = os.urandom(size)
    info = await store.put_object_multipart("seg/0", pieces(data))
    assert (info.key, info.size) == ("seg/0", size)
    assert await read_all(store, "seg/0", 0, size + 10) == data
    head = await store.head("seg/0")
    assert head is not None and head.size == size
    # One PUT while the object fits in one part, a multipart upload beyond.
    stored = raw.head_object(Bucket=store.bucket, Key="seg/0")
    assert stored["ContentLength"] == size
    assert ("-" in stored["ETag"]) == (size >= PART)


async def test_sources_path_file_and_iterable(store: S3ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(2 * PART + 3)
    path = tmp_path / "segment"
    path.write_bytes(data)
    await store.put_object_multipart("from-path", path)
    with open(path, "rb") as file:
        await store.put_object_multipart("from-file", file)
    await store.put_object_multipart("from-list", [data[:7], b"", data[7:]])
    await store.put_object_multipart("from-bytesio", io.BytesIO(data), part_bytes=6 * MiB)
    await store.put_object_multipart("from-bytes", data)
    for key in ("from-path", "from-file", "from-list", "from-bytesio", "from-bytes"):
        assert await read_all(store, key, 0, len(data)) == data, key


async def test_ranged_reads(store: S3ObjectStore) -> None:
    size = 3 * PART + 7
    data = os.urandom(size)
    await store.put_object_multipart("r", pieces(data))
    for start, end in [
        (0, 1),
        (PART - 1, PART + 1),  # across a part boundary
        (3 * PART, size),
        (size - 1, size + 1000),  # past the end: what there is
        (12345, 2 * PART + 999),
    ]:
        assert await read_all(store, "r", start, end) == data[start:end], (start, end)
    assert await read_all(store, "r", size, size + 10) == b""
    assert await read_all(store, "r", 5, 5) == b""


async def test_compose_concatenates_objects_server_side(store: S3ObjectStore) -> None:
    segments = [os.urandom(PART), os.urandom(PART + 3), os.urandom(11)]
    for number, data in enumerate(segments):
        await store.put_object_multipart(f"seg/{number}", [data])
    info = await store.compose("whole", [f"seg/{n}" for n in range(3)])
    assert info.size == sum(map(len, segments))
    assert await read_all(store, "whole", 0, info.size) == b"".join(segments)
    with pytest.raises(NotFound):
        await store.compose("broken", ["seg/0", "no-such-segment"])
    assert await store.head("broken") is None


async def test_a_reader_may_stop_early(store: S3ObjectStore) -> None:
    await store.put_object_multipart("early", os.urandom(3 * MiB))
    for _ in range(3 * READ_CONNECTIONS):  # more than the pool: connections come back
        async with contextlib.aclosing(store.get_range("early", 0, 3 * MiB)) as chunks:
            async for chunk in chunks:
                assert chunk
                break


async def test_missing_object(store: S3ObjectStore) -> None:
    await store.check()
    assert await store.head("nope") is None
    with pytest.raises(NotFound):
        await read_all(store, "nope", 0, 10)


async def test_list_prefix_and_store_prefix(s3_server: S3Server, s3_bucket: str) -> None:
    async with S3ObjectStore(s3_bucket, settings_for(s3_server), prefix="/tenant/") as store:
        for key, body in [("a/1", b"x"), ("a/2", b"yy"), ("b/1", b"zzz")]:
            await store.put_object_multipart(key, [body])
        listed = [info async for info in store.list_prefix("a/")]
        assert [(i.key, i.size) for i in listed] == [("a/1", 1), ("a/2", 2)]
        assert [i.key async for i in store.list_prefix()] == ["a/1", "a/2", "b/1"]
    async with S3ObjectStore(s3_bucket, settings_for(s3_server)) as whole:
        assert [i.key async for i in whole.list_prefix()] == [
            "tenant/a/1",
            "tenant/a/2",
            "tenant/b/1",
        ]


async def test_delete_prefix_removes_objects_and_aborts_unfinished_uploads(
    store: S3ObjectStore, raw: Any
) -> None:
    for key in ("s/1/a", "s/1/b", "s/10/a", "s/2/a"):
        await store.put_object_multipart(key, [b"data of " + key.encode()])
    upload = raw.create_multipart_upload(Bucket=store.bucket, Key="s/1/c")
    raw.upload_part(
        Bucket=store.bucket, Key="s/1/c", UploadId=upload["UploadId"], PartNumber=1, Body=b"p"
    )
    assert [
        u["Key"] for u in raw.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    ] == ["s/1/c"]

    assert await store.delete_prefix("s/1/") == 2

    assert [i.key async for i in store.list_prefix("s/")] == ["s/10/a", "s/2/a"]
    assert raw.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
    assert await store.delete_prefix("s/1/") == 0  # idempotent
    with pytest.raises(ValueError):
        await store.delete_prefix("")


async def test_throttling_and_5xx_are_retried(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy
) -> None:
    data = os.urandom(2 * PART + 1)
    settings = settings_for(s3_server, proxy.endpoint_url, retries=3)
    async with S3ObjectStore(s3_bucket, settings) as store:
        proxy.fail_next = 3  # CreateMultipartUpload gets three 503 SlowDown, then goes through
        await store.put_object_multipart("retried", pieces(data))
        assert proxy.faults == 3
        assert proxy.requests[:4] == ["POST /" + s3_bucket + "/retried?uploads"] * 4
        assert await read_all(store, "retried", 0, len(data)) == data


async def test_retries_back_off_exponentially_up_to_the_cap(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Full jitter draws each pause from [0, min(max, base × 2^attempt)]: take the
    # top of every range to see the ranges themselves.
    monkeypatch.setattr(s3_objects.random, "uniform", lambda low, high: high)
    pauses: list[float] = []
    sleep = asyncio.sleep

    async def recorded(delay: float, *args: Any) -> Any:
        if delay > 0:
            pauses.append(delay)
        return await sleep(delay, *args)

    monkeypatch.setattr(s3_objects.asyncio, "sleep", recorded)
    settings = settings_for(
        s3_server, proxy.endpoint_url, backoff_base_seconds=0.01, backoff_max_seconds=0.05
    )
    async with S3ObjectStore(s3_bucket, settings) as store:
        proxy.fail_next = 5
        await store.put_object_multipart("paced", b"abc")
    assert pauses == pytest.approx([0.01, 0.02, 0.04, 0.05, 0.05])


async def test_timeouts_are_retried(s3_server: S3Server, s3_bucket: str, proxy: FaultProxy) -> None:
    settings = settings_for(s3_server, proxy.endpoint_url, timeout_seconds=0.3)
    async with S3ObjectStore(s3_bucket, settings) as store:
        # Held far past the client's read timeout (and the test's own): only a
        # timeout that works gets this upload through.
        proxy.delay_next, proxy.delay_seconds = 2, 50.0
        info = await store.put_object_multipart("slow", [b"abc"])
        assert (info.size, proxy.faults) == (3, 2)
        assert await read_all(store, "slow", 0, 3) == b"abc"


async def test_a_part_refused_after_its_body_went_is_sent_whole_again(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy
) -> None:
    """The proxy reads each body before its 503: every retry must send the part
    from its start again (a single PUT, then an UploadPart)."""
    small, large = os.urandom(PART - 1), os.urandom(2 * PART + 1)
    async with S3ObjectStore(s3_bucket, settings_for(s3_server, proxy.endpoint_url)) as store:
        proxy.fail_next = 2
        await store.put_object_multipart("small", small)
        assert proxy.faults == 2
        assert await read_all(store, "small", 0, len(small)) == small

        async def refused_once_created() -> AsyncIterator[bytes]:
            pulled, armed = 0, False
            async for piece in pieces(large):
                if pulled >= PART and not armed:
                    # Pulled for the second part: the first one is read and
                    # CreateMultipartUpload answered, so the next request is a part.
                    proxy.fail_next, armed = 1, True
                pulled += len(piece)
                yield piece

        await store.put_object_multipart("large", refused_once_created())
        assert proxy.faults == 3
        uploads = [r for r in proxy.requests if "partNumber=" in r]
        assert len(uploads) == 4  # three parts, one of them twice
        assert await read_all(store, "large", 0, len(large)) == large


async def test_a_read_cut_short_resumes_where_it_stopped(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy
) -> None:
    data = os.urandom(3 * MiB)
    async with S3ObjectStore(s3_bucket, settings_for(s3_server)) as direct:
        await direct.put_object_multipart("cut", [data])
    async with S3ObjectStore(s3_bucket, settings_for(s3_server, proxy.endpoint_url)) as store:
        proxy.cut_next, proxy.cut_after = 2, 1 * MiB + 17
        assert await read_all(store, "cut", 100, len(data)) == data[100:]
        gets = [r for r in proxy.requests if r.startswith("GET")]
        assert len(gets) == 3 and proxy.faults == 2


async def test_unreachable_bucket_is_storage_unavailable(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy
) -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    down = settings_for(s3_server, f"http://127.0.0.1:{closed_port}", retries=2)
    async with S3ObjectStore(s3_bucket, down) as store:
        with pytest.raises(StorageUnavailable) as caught:
            await store.put_object_multipart("k", [b"x"])
        assert caught.value.status == 503
        with pytest.raises(StorageUnavailable):
            await read_all(store, "k", 0, 1)
        with pytest.raises(StorageUnavailable):
            await store.head("k")

    # Always 503: given up after 1 + retries attempts.
    async with S3ObjectStore(
        s3_bucket, settings_for(s3_server, proxy.endpoint_url, retries=2)
    ) as store:
        proxy.fail_next = 1000
        with pytest.raises(StorageUnavailable) as caught:
            await store.put_object_multipart("k", [b"x"])
        assert "SlowDown" in caught.value.message
        assert proxy.faults == 3

    # Refused credentials and an unknown bucket are not retried.
    wrong = settings_for(s3_server, secret_access_key="wrong")
    async with S3ObjectStore(s3_bucket, wrong) as store:
        with pytest.raises(StorageUnavailable) as caught:
            await store.head("k")
        assert "wrong" not in caught.value.message
    async with S3ObjectStore("no-such-bucket-here", settings_for(s3_server)) as store:
        with pytest.raises(StorageUnavailable, match="no bucket no-such-bucket-here"):
            await store.check()
        with pytest.raises(StorageUnavailable, match="NoSuchBucket"):
            await store.put_object_multipart("k", [b"x"])


async def test_a_failed_multipart_upload_is_aborted(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy, raw: Any
) -> None:
    settings = settings_for(s3_server, proxy.endpoint_url, retries=1)
    async with S3ObjectStore(s3_bucket, settings) as store:
        original = proxy._forward

        async def fail_parts(lines: list[str], *args: Any) -> None:
            if "partNumber=2" in lines[0]:
                proxy.fail_next = 2  # this part's retry fails too
            await original(lines, *args)

        proxy._forward = fail_parts  # type: ignore[method-assign]
        with pytest.raises(StorageUnavailable):
            await store.put_object_multipart("half", pieces(os.urandom(3 * PART)))
    assert raw.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert "Contents" not in raw.list_objects_v2(Bucket=s3_bucket)


def peak_rss_reset() -> int:
    """Reset VmHWM to the current RSS (Linux clear_refs) and return it, in bytes."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return rss("VmRSS")


def rss(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


async def test_memory_stays_bounded_by_parts_in_flight(store: S3ObjectStore) -> None:
    """128 MiB from a generator, 5 MiB parts, 2 slots: RSS grows by a few parts
    (34 MiB measured), not by the object (194 MiB without the slots)."""
    size = 128 * MiB
    digest = hashlib.sha256()

    async def generated() -> AsyncIterator[bytes]:
        for i in range(size // MiB):
            block = i.to_bytes(4, "big") * (MiB // 4)
            digest.update(block)
            yield block

    try:
        before = peak_rss_reset()
    except OSError:
        pytest.skip("no /proc/self/clear_refs to reset the peak RSS")
    info = await store.put_object_multipart("big", generated())
    growth = rss("VmHWM") - before
    assert info.size == size
    bound = store.settings.part_bytes * store.settings.max_concurrency
    assert growth < 5 * bound, (
        f"RSS grew by {growth / MiB:.1f} MiB for {bound / MiB:.0f} MiB of parts"
    )
    check = hashlib.sha256()
    async for chunk in store.get_range("big", 0, size):
        check.update(chunk)
    assert check.hexdigest() == digest.hexdigest()


async def test_standard_aws_variables(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_REGION", s3_server.region)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_access_key)
    async with S3ObjectStore(s3_bucket) as store:
        await store.put_object_multipart("env", [b"from the environment"])
        head = await store.head("env")
        assert head is not None and (head.key, head.size) == ("env", 20)


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="s3.part_bytes"):
        S3Settings(part_bytes=1 * MiB)
    with pytest.raises(ConfigError, match="s3.max_concurrency"):
        S3Settings(max_concurrency=0)
    with pytest.raises(ConfigError, match="s3.retries"):
        S3Settings(retries=-1)
    assert "secret" not in repr(S3Settings(secret_access_key="secret"))
    assert (S3Settings().part_bytes, S3Settings().retries) == (8 * MiB, 8)
