"""GET /metrics, retention and the logs (SPEC §5, §6)."""

from __future__ import annotations

import json
import time

import httpx


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and " " in line:
            key, value = line.rsplit(" ", 1)
            if key == name:
                return float(value)
    raise AssertionError(f"{name} not in metrics")


def test_metrics_count_streams_bytes_and_requests(client: httpx.Client) -> None:
    client.post("/stream/m1", content=b"0123456789")
    client.get("/stream/m1")
    client.get("/stream/missing")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert metric(text, 'weft_streams{state="complete"}') == 1
    assert metric(text, 'weft_streams{state="live"}') == 0
    assert metric(text, "weft_bytes_in_total") == 10
    assert metric(text, "weft_bytes_out_total") == 10
    assert metric(text, "weft_live_readers") == 0
    assert metric(text, "weft_live_producers") == 0
    assert (
        metric(
            text, 'weft_http_requests_total{method="POST",route="/stream/{stream_id}",status="201"}'
        )
        == 1
    )
    assert (
        metric(
            text, 'weft_http_requests_total{method="GET",route="/stream/{stream_id}",status="404"}'
        )
        == 1
    )
    assert (
        'weft_http_request_duration_seconds_bucket{le="0.1",method="GET",route="/stream/{stream_id}"}'
        in text
    )


def test_metrics_need_the_admin_scope(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(tokens=[{"token": "r", "scopes": ["read"]}, "adm"])
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert (
        httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer r"}).status_code == 403
    )
    assert (
        httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer adm"}).status_code
        == 200
    )


def test_retention_deletes_finished_streams_after_complete_after(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(retention={"complete_after": 0.5})
    with httpx.Client(base_url=server.url, timeout=10) as http:
        http.post("/stream/old", content=b"x")
        deadline = time.monotonic() + 15
        while http.get("/streams/old").status_code == 200:
            assert time.monotonic() < deadline, "retention never deleted the stream"
            time.sleep(0.1)
        assert http.get("/stream/old").status_code == 404


def test_json_logs_carry_requests_but_never_tokens(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(tokens=["very-secret-token"], log_format="json")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        auth = {"Authorization": "Bearer very-secret-token"}
        http.post("/stream/logged", content=b"x", headers=auth)
        http.get("/stream/logged", headers={"Authorization": "Bearer wrong-token"})
    server.stop()
    lines = [json.loads(line) for line in server.log if line.startswith("{")]
    requests = [entry["message"] for entry in lines if entry["logger"] == "weft.access"]
    assert any("method=POST path=/stream/logged" in m and "status=201" in m for m in requests)
    assert any("status=401" in m for m in requests)
    joined = "".join(server.log)
    assert "very-secret-token" not in joined
    assert "wrong-token" not in joined


def test_metrics_and_the_start_log_name_the_node(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(node_id="node-7")
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, 'weft_node_info{node_id="node-7"}') == 1
    started = [line for line in server.log if "weft_started" in line]
    assert len(started) == 1 and "node_id=node-7" in started[0], server.log
