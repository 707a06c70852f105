"""A real Weft server process on an ephemeral port, for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.pg import PG_URL, new_namespace, require_pg

READY = re.compile(r"Uvicorn running on http://[^:]+:(\d+)")
START_TIMEOUT = 20.0
# The metadata database of every server a test starts without a database_url of
# its own: "sqlite" (a file in its data_dir) or "postgresql" (PG_URL, a schema of
# its own per server). Set by ``pytest --database`` or WEFTTEST_DATABASE.
DATABASES = ("sqlite", "postgresql")
DATABASE = os.environ.get("WEFTTEST_DATABASE", "sqlite")


class ServerProcess:
    """``python -m app`` with a config file under a temporary directory.

    ``port`` is 0 on the first start (the kernel picks one, read back from the
    server's log) and kept across ``restart`` so clients can reconnect."""

    def __init__(self, workdir: Path, config: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.config: dict[str, Any] = {"data_dir": str(workdir / "data"), "log_level": "info"}
        self.config.update(config or {})
        # One node across restarts, as a node on a fixed port is: the default
        # (host name and port) would change from port 0 to the port picked, and
        # a restarted node would wait out its own leases as another node's.
        self.config.setdefault("node_id", f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
        if DATABASE == "postgresql" and "database_url" not in self.config:
            require_pg()
            self.config["database_url"] = PG_URL
            self.config["namespace"] = new_namespace()
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, env: dict[str, str] | None = None) -> ServerProcess:
        config_path = self.workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(self.config))
        environ = {k: v for k, v in os.environ.items() if not k.startswith("WEFT_")}
        environ.update(env or {})
        self._ready.clear()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "--config", str(config_path), "--port", str(self.port)],
            cwd=self.workdir,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._drainer = threading.Thread(target=self._drain, args=(self.proc,), daemon=True)
        self._drainer.start()
        if not self._ready.wait(START_TIMEOUT):
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.log[-30:]))
        return self

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.log.append(line)
            match = READY.search(line)
            if match:
                self.port = int(match.group(1))
                self._ready.set()
        self._ready.set()  # exited: let start() report it

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._reap()

    def _reap(self) -> None:
        if self.proc is not None and self.proc.poll() is not None and self.proc.stdout:
            self._drainer.join(5)
            self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap()

    def restart(self) -> ServerProcess:
        self.stop()
        return self.start()

    def wait_port_free(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", self.port))
                    return
                except OSError:
                    time.sleep(0.05)
        raise RuntimeError(f"port {self.port} stayed busy")


def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 10.0) -> bytes:
    """Send bytes on a fresh connection and return everything until the server closes
    (send ``Connection: close`` in head)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)
