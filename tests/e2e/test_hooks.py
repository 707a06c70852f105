"""Webhooks (README "Webhooks") against a real HTTP receiver in the test process:
signed post-* deliveries in order, retried at least once with the same
delivery ids, surviving a kill -9; pre-create refusing (403) and failing
closed (503). Runs on SQLite and, with --database postgresql, on PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import assert_json_error, wait_for
from tests.e2e.hook_receiver import Call, Receiver, verify
from tests.e2e.test_config import run_app, write_config
from tests.nats_env import NATS_URL, drop_streams, require_nats
from tests.pg import PG_URL, new_namespace, require_pg
from tests.server import ServerProcess

SECRET = "whsec-test-7f3a"
TOKEN = "tok-writer-91c2"
FAST = {"min_backoff": 0.05, "max_backoff": 0.3, "poll_interval": 0.2}
POST = ["post-create", "post-complete", "post-abandon", "post-delete"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


def hook(receiver: Receiver, events: list[str], **extra: Any) -> dict[str, Any]:
    return {"url": receiver.url, "events": events, "secret": SECRET, "timeout": 2, **extra}


def hooked_server(
    server_factory: Callable[..., ServerProcess], *hooks: dict[str, Any], **config: Any
) -> ServerProcess:
    return server_factory(hooks=list(hooks), hook_delivery=FAST, **config)


def events_of(calls: list[Call]) -> list[tuple[str, str]]:
    return [(c.document["event"], c.document["stream"]["id"]) for c in calls]


def test_post_hooks_arrive_signed_in_order_with_the_stream(
    server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    server = hooked_server(server_factory, hook(receiver.listen(), POST))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        created = client.post(
            "/stream/hooked-1", content=b"hello", headers={"X-Stream-Metadata": '{"b": 1}'}
        )
        assert created.status_code == 201
        assert client.delete("/stream/hooked-1").status_code == 204
        calls = receiver.wait_for(lambda calls: len(calls) >= 3)
        # Counted once the server has the receiver's answer, just after it was sent.
        delivered = 'weft_hook_deliveries_total{event="post-delete",outcome="delivered"} 1.0'

        def counted() -> str | None:
            text = client.get("/metrics").text
            return text if delivered in text else None

        metrics = wait_for(counted, "the delivery counted")

    assert events_of(calls) == [
        ("post-create", "hooked-1"),
        ("post-complete", "hooked-1"),
        ("post-delete", "hooked-1"),
    ]
    for call in calls:
        assert verify(call, SECRET)
        assert not verify(call, "another-secret")
        assert call.headers["weft-delivery"] == call.document["id"]
        assert call.headers["content-type"] == "application/json"
        assert set(call.document) == {"id", "event", "stream", "time"}
    assert len({c.document["id"] for c in calls}) == 3
    created_doc, completed, deleted = (c.document["stream"] for c in calls)
    assert created_doc["state"] == "live" and created_doc["size"] == 0
    assert created_doc["metadata"] == {"b": 1}
    assert completed["state"] == "complete" and completed["size"] == 5
    assert completed["sha256"] == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert deleted["state"] == "complete"
    assert 'weft_hook_deliveries_total{event="post-complete",outcome="delivered"} 1.0' in metrics
    assert SECRET not in "".join(server.log)


def test_an_abandoned_upload_is_reported_after_its_creation(
    server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    receiver.listen()
    server = hooked_server(server_factory, hook(receiver, ["post-abandon"]), abandon_after=0.5)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        tus = {"Tus-Resumable": "1.0.0"}
        created = client.post("/files", headers=tus | {"Upload-Length": "10"})
        assert created.status_code == 201
        upload_id = created.headers["X-Stream-Id"]
        appended = client.patch(
            f"/files/{upload_id}",
            content=b"abc",
            headers=tus | {"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        )
        assert appended.status_code == 204
        calls = receiver.wait_for(lambda calls: len(calls) >= 1)
    assert events_of(calls) == [("post-abandon", upload_id)]
    stream = calls[0].document["stream"]
    assert (stream["state"], stream["size"]) == ("abandoned", 3)


def test_pre_create_refusal_is_403_with_the_hooks_message_and_nothing_is_stored(
    server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    receiver.listen()
    receiver.status = 422
    receiver.content_type = "application/json"
    receiver.answer = b'{"error": "builds of branch wip are not recorded"}'
    tokens = [{"token": TOKEN, "scopes": ["write", "read"]}]
    server = hooked_server(server_factory, hook(receiver, ["pre-create"]), tokens=tokens)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.url, timeout=10, headers=auth) as client:
        refused = client.post(
            "/stream/wip-1", content=b"x", headers={"X-Stream-Metadata": '{"branch": "wip"}'}
        )
        assert assert_json_error(refused, 403) == "builds of branch wip are not recorded"
        assert client.get("/streams/wip-1").status_code == 404

        receiver.content_type = "text/plain"
        receiver.answer = b"no\x1b[31m tus " + b"x" * 5000  # text, cut short, one line
        tus = client.post("/files", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "3"})
        message = assert_json_error(tus, 403)
        assert message.startswith("no [31m tus xxx") and len(message) == 500
        assert client.get("/streams").json()["streams"] == []

        receiver.status = 204
        assert client.post("/stream/ok-1", content=b"y").status_code == 201

    asked = [c.document for c in receiver.calls]
    assert [d["event"] for d in asked] == ["pre-create"] * 3
    assert asked[0]["stream"] == {"id": "wip-1", "metadata": {"branch": "wip"}}
    assert asked[0]["scopes"] == ["read", "write"]
    assert asked[1]["stream"]["id"]  # tus: the id the upload would get
    assert all(verify(c, SECRET) for c in receiver.calls)
    assert not any(TOKEN.encode() in c.body or TOKEN in str(c.headers) for c in receiver.calls)


def test_pre_create_hook_unreachable_or_too_slow_is_503(
    server_factory: Callable[..., ServerProcess], receiver: Receiver, tmp_path: Path
) -> None:
    down = Receiver()  # bound, never listening: connections are refused
    slow = receiver.listen()
    slow.delay = 2.0
    try:
        for target, timeout in ((down, 2), (slow, 0.3)):
            server = hooked_server(server_factory, hook(target, ["pre-create"], timeout=timeout))
            with httpx.Client(base_url=server.url, timeout=10) as client:
                started = time.monotonic()
                refused = client.post("/stream/closed-1", content=b"x")
                assert assert_json_error(refused, 503) == (
                    "A pre-create hook did not answer; nothing was created."
                )
                assert time.monotonic() - started < 1.5
                assert client.get("/streams/closed-1").status_code == 404
            server.stop()
    finally:
        down.close()


def test_failing_receiver_gets_retries_and_finally_every_delivery_with_the_same_ids(
    server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    receiver.fail_first = 4
    server = hooked_server(server_factory, hook(receiver.listen(), POST))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.post("/stream/retried-1", content=b"abc").status_code == 201
        assert client.post("/stream/retried-2", content=b"de").status_code == 201
        calls = receiver.wait_for(lambda calls: len(receiver.delivered(calls[4:])) >= 4)
        metrics = client.get("/metrics").text

    failed, succeeded = calls[:4], calls[4:]
    # Every failed delivery came again under its id; nothing new was sent
    # before the delivery before it of the same stream got through.
    assert {c.document["id"] for c in failed} <= {c.document["id"] for c in succeeded}
    for stream_id in ("retried-1", "retried-2"):
        mine = [c for c in calls if c.document["stream"]["id"] == stream_id]
        kinds = [c.document["event"] for c in mine]
        assert kinds.index("post-complete") > max(
            i for i, kind in enumerate(kinds) if kind == "post-create"
        )
        assert len({c.document["id"] for c in mine}) == 2
    assert sorted(receiver.delivered(succeeded)) == sorted(
        [(e, s) for s in ("retried-1", "retried-2") for e in ("post-create", "post-complete")]
    )
    wait_for(lambda: "".join(server.log).count("hook_delivery_failed") >= 4, "4 lines")
    log = "".join(server.log)
    assert log.count("hook_delivery_failed") == 4
    assert "error=HTTP 500" in log and SECRET not in log
    assert 'weft_hook_deliveries_total{event="post-create",outcome="failed"}' in metrics


@pytest.mark.timeout(90)
def test_deliveries_pending_at_a_kill_9_arrive_after_the_restart(
    server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    server = hooked_server(server_factory, hook(receiver, POST))  # the receiver is down
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for n in range(3):
            assert client.post(f"/stream/crash-{n}", content=b"z" * n).status_code == 201
        assert client.delete("/stream/crash-0").status_code == 204
        wait_for(lambda: "hook_delivery_failed" in "".join(server.log), "a failed attempt")
    server.kill()
    receiver.listen()
    server.start()
    calls = receiver.wait_for(lambda calls: len(receiver.delivered(calls)) >= 7)
    assert sorted(set(receiver.delivered(calls))) == sorted(
        [("post-create", f"crash-{n}") for n in range(3)]
        + [("post-complete", f"crash-{n}") for n in range(3)]
        + [("post-delete", "crash-0")]
    )
    for n in range(3):
        expected = ["post-create", "post-complete"] + (["post-delete"] if n == 0 else [])
        assert [e for e, s in receiver.delivered(calls) if s == f"crash-{n}"] == expected
    assert all(verify(c, SECRET) for c in calls)


@pytest.mark.parametrize(
    ("hooks", "key"),
    [
        ([{"url": "http://h/x", "events": ["post-finish"], "secret": SECRET}], "hooks.0.events.0"),
        ([{"url": "ftp://h/x", "events": ["post-create"], "secret": SECRET}], "hooks.0.url"),
        ([{"url": "http://h/x", "events": ["pre-create"]}], "hooks.0.secret"),
    ],
)
def test_bad_hook_config_stops_the_server_naming_the_key(
    tmp_path: Path, hooks: list[dict[str, Any]], key: str
) -> None:
    config = write_config(tmp_path, {"data_dir": str(tmp_path / "data"), "hooks": hooks})
    result = run_app(tmp_path, "--config", str(config), "--port", "0")
    assert result.returncode != 0
    assert f"config key '{key}'" in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(120)
def test_deliveries_of_a_node_killed_on_a_cluster_are_made_by_another(
    server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    require_pg()
    require_nats()
    namespace = new_namespace()
    shared = {"database_url": PG_URL, "tail_url": NATS_URL, "namespace": namespace}
    config = {"hooks": [hook(receiver, POST, timeout=1)], "hook_delivery": FAST, **shared}
    try:
        a, b = (server_factory(node_id=name, **config) for name in ("node-a", "node-b"))
        for node, names in ((a, ("a-1", "a-2")), (b, ("b-1",))):
            with httpx.Client(base_url=node.url, timeout=10) as client:
                for stream_id in names:
                    assert client.post(f"/stream/{stream_id}", content=b"q").status_code == 201
        wait_for(lambda: "hook_delivery_failed" in "".join(a.log), "a failed attempt on a")
        a.kill()  # the receiver is still down: a's claims die with it
        receiver.listen()
        calls = receiver.wait_for(lambda calls: len(receiver.delivered(calls)) >= 6, timeout=30)
    finally:
        drop_streams(f"{namespace}_events")
    delivered = receiver.delivered(calls)
    for stream_id in ("a-1", "a-2", "b-1"):
        assert [e for e, s in delivered if s == stream_id] == ["post-create", "post-complete"]
    assert len({c.document["id"] for c in calls}) == 6
