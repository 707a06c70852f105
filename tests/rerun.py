"""The end-to-end suite once more on PostgreSQL, in a pytest of its own beside
the session (tests/e2e/test_postgresql.py waits for it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tests.server
from tests.pg import unreachable_reason

REPO = Path(__file__).resolve().parents[1]
SUITE_TIMEOUT = 1200  # about 5 min on PostgreSQL on a quiet 2-core machine
SUITE = "tests/e2e/test_postgresql.py::test_the_end_to_end_suite_passes_on_postgresql"
# Modules whose servers' behaviour the database does not change (HTTP framing,
# the client and CLI, the browser viewer, the API docs): run once, on SQLite.
NOT_ON_POSTGRESQL = (
    "test_cli.py",
    "test_cli_read.py",
    "test_client.py",
    "test_client_after_201.py",
    "test_docs.py",
    "test_edges.py",
    "test_hardening.py",
    "test_openapi.py",
    "test_spy.py",
    "test_timeouts.py",
    "test_ui.py",
)


class Rerun:
    """The end-to-end suite on PostgreSQL in a pytest of its own, started as soon
    as collection shows this session will want it, so that it runs beside the
    rest of the session (much of either is waiting on servers) rather than after it."""

    process: subprocess.Popen[bytes] | None = None
    output: Path | None = None
    started = 0.0

    @classmethod
    def wanted(cls, items: list[pytest.Item]) -> bool:
        return (
            os.environ.get("CI") == "true"
            and tests.server.DATABASE != "postgresql"
            and any(item.nodeid == SUITE for item in items)
            and not unreachable_reason()
        )

    @classmethod
    def start(cls, workdir: Path) -> None:
        cls.output = workdir / "weft-e2e-on-postgresql.log"
        ignored = [f"--ignore=tests/e2e/{name}" for name in NOT_ON_POSTGRESQL]
        with cls.output.open("wb") as out:
            cls.process = subprocess.Popen(
                [sys.executable, "-m", "pytest", "tests/e2e", "-q", "-p", "no:cacheprovider"]
                + ["--database", "postgresql", *ignored],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        cls.started = time.monotonic()

    @classmethod
    def stop(cls) -> None:
        if cls.process is not None and cls.process.poll() is None:
            cls.process.kill()
            cls.process.wait(10)
