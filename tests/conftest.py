from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tests.server
from tests.pg import drop_session_namespaces
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
    if tests.server.DATABASE == "sqlite":
        return
    skip = pytest.mark.skip(
        reason=f"needs the SQLite database in data_dir (--database {tests.server.DATABASE})"
    )
    for item in items:
        if item.get_closest_marker("sqlite_only"):
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    drop_session_namespaces()


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
