"""Managing streams (SPEC §5): info JSON, DELETE, the build reaper, health."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

from tests.e2e.helpers import module_server
from tests.e2e.test_spy import RawProducer, unique, wait_until
from tests.server import ServerProcess

RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
INFO_KEYS = {"id", "metadata", "state", "size", "sha256", "created_at", "updated_at", "finished_at"}
DETAIL_KEYS = INFO_KEYS | {"stored_bytes"}  # GET /streams/{id} only (issue 12)


def moment(text: str) -> datetime:
    assert RFC3339.fullmatch(text), text
    return datetime.fromisoformat(text)


@pytest.fixture(scope="module")
def manage_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory.mktemp("manage"))


@pytest.fixture
def http(manage_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=manage_server.url, timeout=10) as client:
        yield client


class Tail:
    """A reader tailing a stream in a thread; records what it got and whether it ended."""

    def __init__(self, url: str) -> None:
        self.received = bytearray()
        self.started = threading.Event()
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._thread.start()

    def _run(self, url: str) -> None:
        try:
            with httpx.stream("GET", url, timeout=httpx.Timeout(10, read=30)) as response:
                self.started.set()
                for chunk in response.iter_raw():
                    self.received += chunk
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            self.started.set()
            self.ended.set()

    def join(self, timeout: float = 10) -> None:
        assert self.ended.wait(timeout), "the tailing response did not end"
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error


def test_stream_info_json_while_live_then_complete(
    manage_server: ServerProcess, http: httpx.Client
) -> None:
    stream_id = unique("info")
    with RawProducer(manage_server.port, stream_id, metadata={"job": "lint", "n": 3}) as producer:
        producer.send(b"abc")
        wait_until(lambda: http.get(f"/streams/{stream_id}").json()["size"] == 3, what="size 3")
        live = http.get(f"/streams/{stream_id}")
        assert live.status_code == 200
        assert live.headers["content-type"] == "application/json"
        body = live.json()
        assert set(body) == DETAIL_KEYS
        assert body["stored_bytes"] == 3
        assert body["id"] == stream_id
        assert body["metadata"] == {"job": "lint", "n": 3}
        assert body["state"] == "live"
        assert body["sha256"] is None
        assert body["finished_at"] is None
        created = moment(body["created_at"])
        assert moment(body["updated_at"]) >= created
        producer.send(b"def")
        producer.finish()
    done = http.get(f"/streams/{stream_id}").json()
    assert set(done) == DETAIL_KEYS
    assert done["stored_bytes"] == 6
    assert done["state"] == "complete"
    assert done["size"] == 6
    assert done["sha256"] == hashlib.sha256(b"abcdef").hexdigest()
    assert moment(done["created_at"]) == created
    assert moment(done["finished_at"]) >= created
    assert moment(done["updated_at"]) >= created


def test_stream_info_of_unknown_id_is_404(http: httpx.Client) -> None:
    response = http.get("/streams/no-such-stream")
    assert response.status_code == 404
    assert response.json() == {"error": "The stream with ID no-such-stream does not exist"}


def test_delete_stream_is_204_then_404(http: httpx.Client) -> None:
    stream_id = unique("del")
    assert http.post(f"/stream/{stream_id}", content=b"bytes").status_code == 201
    deleted = http.delete(f"/stream/{stream_id}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert http.get(f"/stream/{stream_id}").status_code == 404
    assert http.get(f"/streams/{stream_id}").status_code == 404
    assert http.head(f"/stream/{stream_id}").status_code == 404
    again = http.delete(f"/stream/{stream_id}")
    assert again.status_code == 404
    assert again.json() == {"error": f"The stream with ID {stream_id} does not exist"}


def test_delete_stream_frees_its_id_for_a_new_stream(http: httpx.Client) -> None:
    stream_id = unique("reuse")
    http.post(f"/stream/{stream_id}", content=b"old")
    assert http.delete(f"/stream/{stream_id}").status_code == 204
    created = http.post(f"/stream/{stream_id}", content=b"new")
    assert created.status_code == 201
    assert "x-stream-replaced" not in created.headers
    assert http.get(f"/stream/{stream_id}").content == b"new"


def test_delete_live_stream_ends_its_tailing_reader(
    manage_server: ServerProcess, http: httpx.Client
) -> None:
    stream_id = unique("tail")
    with RawProducer(manage_server.port, stream_id) as producer:
        producer.send(b"first\n")
        wait_until(lambda: http.get(f"/streams/{stream_id}").json()["size"] == 6, what="stored")
        tail = Tail(f"{manage_server.url}/stream/{stream_id}")
        wait_until(lambda: bytes(tail.received) == b"first\n", what="replayed bytes")
        assert not tail.ended.is_set()
        assert http.delete(f"/stream/{stream_id}").status_code == 204
        tail.join()
    assert bytes(tail.received) == b"first\n"
    assert http.get(f"/stream/{stream_id}").status_code == 404


def test_delete_build_removes_streams_by_metadata_or_id_prefix(
    manage_server: ServerProcess, http: httpx.Client
) -> None:
    build = str(100000 + int(unique("b").split("-")[1], 16) % 800000)
    other = str(int(build) + 1)

    def post(stream_id: str, metadata: object = None) -> None:
        headers = {} if metadata is None else {"X-Stream-Metadata": json.dumps(metadata)}
        assert http.post(f"/stream/{stream_id}", content=b"x", headers=headers).status_code == 201

    matching = {
        f"build-{build}-compile": None,
        f"build-{build}-": None,
        unique("meta-str"): {"buildId": build},
        unique("meta-num"): {"buildId": int(build)},
    }
    untouched = {
        f"build-{build}1-x": None,  # a longer build id
        f"build-{build}": None,  # no dash after the build id
        f"xbuild-{build}-x": None,
        unique("other-build"): {"buildId": other},
        unique("nested"): {"meta": {"buildId": build}},
        unique("other-key"): {"build": build},
    }
    for stream_id, metadata in {**matching, **untouched}.items():
        post(stream_id, metadata)
    with RawProducer(manage_server.port, unique("live"), metadata={"buildId": build}) as producer:
        producer.send(b"still writing\n")
        live_id = producer.id
        wait_until(lambda: http.get(f"/streams/{live_id}").json()["size"] == 14, what="stored")
        tail = Tail(f"{manage_server.url}/stream/{live_id}")
        wait_until(lambda: len(tail.received) == 14, what="replayed bytes")

        response = http.delete(f"/stream/build/{build}")
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"status", "buildId", "deleted"}
        assert body["status"] == "deleted"
        assert body["buildId"] == build
        assert sorted(body["deleted"]) == sorted([*matching, live_id])
        tail.join()
    for stream_id in [*matching, live_id]:
        assert http.get(f"/streams/{stream_id}").status_code == 404
    for stream_id in untouched:
        assert http.get(f"/stream/{stream_id}").content == b"x"


def test_delete_build_with_like_wildcards_matches_literally(http: httpx.Client) -> None:
    token = unique("w").split("-")[1]
    kept = f"build-{token}x1-a"
    http.post(f"/stream/{kept}", content=b"x")
    http.post(f"/stream/build-{token}_1-a", content=b"x")
    response = http.delete(f"/stream/build/{token}_1")
    assert response.json()["deleted"] == [f"build-{token}_1-a"]
    assert http.get(f"/stream/{kept}").status_code == 200
    response = http.delete(f"/stream/build/{token}%25")  # a literal "%"
    assert response.json()["deleted"] == []
    assert http.get(f"/stream/{kept}").status_code == 200


def test_delete_build_with_no_match_is_200_with_empty_list(http: httpx.Client) -> None:
    response = http.delete("/stream/build/no-such-build-anywhere")
    assert response.status_code == 200
    assert response.json() == {
        "status": "deleted",
        "buildId": "no-such-build-anywhere",
        "deleted": [],
    }


def test_healthz_and_readyz_answer_200(http: httpx.Client) -> None:
    health = http.get("/healthz")
    assert health.status_code == 200
    assert health.headers["content-type"] == "application/json"
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.headers["content-type"] == "application/json"


def test_healthz_and_readyz_answer_head_too(http: httpx.Client) -> None:
    for path in ("/healthz", "/readyz"):
        response = http.head(path)
        assert response.status_code == 200, path
        assert response.content == b""
