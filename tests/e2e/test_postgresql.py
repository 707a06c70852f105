"""Servers on PostgreSQL, whatever ``--database`` says (SPEC §12): these run in
every test run, so CI always starts real server processes on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

import tests.server
from tests.e2e.helpers import make_dropped_stream, wait_for, wait_until_resumable
from tests.pg import PG_URL, new_namespace, require_pg
from tests.rerun import SUITE_TIMEOUT, Rerun
from tests.server import ServerProcess

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pg_servers(tmp_path: Path) -> list[ServerProcess]:
    require_pg()
    namespace = new_namespace()
    servers = []
    for n in range(4):
        workdir = tmp_path / f"node{n}"
        workdir.mkdir()
        servers.append(
            ServerProcess(
                workdir, {"database_url": PG_URL, "namespace": namespace, "node_id": f"node{n}"}
            )
        )
    yield servers
    for server in servers:
        server.stop()


def test_four_servers_starting_together_on_an_empty_schema_all_come_up_and_serve(
    pg_servers: list[ServerProcess],
) -> None:
    errors: list[BaseException] = []

    def start(server: ServerProcess) -> None:
        try:
            server.start()
        except BaseException as exc:  # reported below, with the server's log
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(server,)) for server in pg_servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    for server in pg_servers:
        assert server.proc is not None and server.proc.poll() is None, "".join(server.log[-20:])
    for n, server in enumerate(pg_servers):
        with httpx.Client(base_url=server.url, timeout=10) as http:
            assert http.get("/readyz").status_code == 200
            created = http.post(
                f"/stream/from-node{n}",
                content=b"x" * n,
                headers={"X-Stream-Metadata": '{"n": null}'},
            )
            assert created.status_code == 201, created.text
            assert http.get(f"/stream/from-node{n}").content == b"x" * n
    # One database: every node lists the streams of all of them.
    expected = [f"from-node{n}" for n in (3, 2, 1, 0)]
    for server in pg_servers:
        listed = httpx.get(f"{server.url}/streams", params={"meta.n": "null"}, timeout=10)
        assert [s["id"] for s in listed.json()["streams"]] == expected


def test_a_server_on_postgresql_keeps_and_recovers_its_streams_across_restarts(
    pg_servers: list[ServerProcess],
) -> None:
    server = pg_servers[0].start()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        done = http.post(
            "/stream/done", content=b"all of it", headers={"X-Stream-Metadata": '{"k": true}'}
        )
        assert done.status_code == 201
        make_dropped_stream(http, server.port, "live", b"part")
    server.kill()
    server.start()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/stream/done").content == b"all of it"
        info = http.get("/streams/live").json()
        assert (info["state"], info["size"]) == ("live", 4)
        wait_until_resumable(http, "live", 4)
        resumed = http.patch(
            "/stream/live",
            content=b" more",
            headers={"Upload-Offset": "4", "Upload-Complete": "?1"},
        )
        assert resumed.status_code == 204, resumed.text
        wait_for(lambda: http.get("/streams/live").json()["state"] == "complete", "completion")
        assert http.get("/stream/live").content == b"part more"
        listed = http.get("/streams", params={"meta.k": "true"}).json()["streams"]
        assert [s["id"] for s in listed] == ["done"]
        assert http.delete("/stream/done").status_code == 204
        assert http.get("/streams/done").status_code == 404


def test_a_second_process_with_a_running_nodes_node_id_stops_at_start(
    pg_servers: list[ServerProcess],
) -> None:
    first, twin, other = pg_servers[0].start(), pg_servers[1], pg_servers[2]
    twin.config["node_id"] = first.config["node_id"]
    twin.start()
    assert twin.proc is not None and twin.proc.wait(20) == 1
    log = "".join(twin.log)
    assert "weft: cannot start: node_id 'node0' is in use by another running node" in log, log
    assert other.start().proc is not None and other.proc.poll() is None  # its own node_id
    with httpx.Client(base_url=first.url, timeout=10) as http:
        assert http.get("/readyz").status_code == 200  # the first one serves on
    # Once the holder is gone, even by kill -9, its node_id is free again.
    first.kill()
    twin.restart()
    assert twin.proc is not None and twin.proc.poll() is None, "".join(twin.log[-20:])
    with httpx.Client(base_url=twin.url, timeout=10) as http:
        assert http.get("/readyz").status_code == 200


@pytest.mark.timeout(SUITE_TIMEOUT + 60)
def test_the_end_to_end_suite_passes_on_postgresql() -> None:
    """CI runs one command (the README's); this runs the end-to-end tests once
    more with the servers on PostgreSQL (but for NOT_ON_POSTGRESQL), in a pytest
    of its own that tests/conftest.py started at the beginning of the session."""
    if tests.server.DATABASE == "postgresql":
        pytest.skip("this run already is the end-to-end suite on PostgreSQL")
    if os.environ.get("CI") != "true":
        pytest.skip("runs under CI=true; locally: pytest tests/e2e --database postgresql")
    require_pg()
    assert Rerun.process is not None and Rerun.output is not None, "the rerun was not started"
    left = SUITE_TIMEOUT - (time.monotonic() - Rerun.started)
    try:
        returncode = Rerun.process.wait(max(left, 1.0))
    except subprocess.TimeoutExpired:
        Rerun.stop()
        returncode = -1
    text = Rerun.output.read_text(errors="replace")
    assert returncode == 0, text[-8000:]
    print(text.strip().splitlines()[-1])
