"""The servers under test: Weft, and the references (nginx or bench/reference_server.py,
piping-server). Each is started through a :class:`~bench.procs.Procs` registry."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import (
    BENCH,
    CACHE_DIR,
    REPO,
    START_TIMEOUT,
    WEFT_READY,
    BenchError,
    Procs,
    free_port,
    python_for_servers,
    tail_text,
    wait_listening,
)


@dataclass
class Server:
    name: str
    label: str
    proc: subprocess.Popen[Any]
    port: int
    log_path: Path
    upload_method: str = "POST"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None


def start_weft(
    procs: Procs,
    directory: Path,
    label: str = "weft",
    module: list[str] | None = None,
    settings: dict[str, Any] | None = None,
) -> Server:
    """Weft on its embedded defaults, except data_dir (a fresh one in ``directory``)
    and ``settings`` (more configuration keys, e.g. store_url and s3).
    module: what follows ``python -m`` instead of ``app`` (a patched variant)."""
    directory.mkdir(parents=True)
    config = {"data_dir": str(directory / "data"), **(settings or {})}
    # JSON is YAML; the file may hold S3 credentials, so it stays in the temporary directory.
    (directory / "config.yaml").write_text(json.dumps(config) + "\n")
    return launch_weft(procs, directory, label, module)


def launch_weft(
    procs: Procs, directory: Path, label: str = "weft", module: list[str] | None = None
) -> Server:
    """Start Weft on the config.yaml in ``directory`` (again, after a stop: same data)."""
    config = directory / "config.yaml"
    log_path = directory / "server.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WEFT_")}
    proc = procs.spawn(
        [python_for_servers(), "-m", *(module or ["app"]), "--port", "0", "--config", str(config)],
        cwd=REPO,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    port: list[int] = []
    ready = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        with open(log_path, "ab") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                match = WEFT_READY.search(line.decode(errors="replace"))
                if match and not port:
                    port.append(int(match.group(1)))
                    ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(START_TIMEOUT) or not port:
        procs.stop(proc)
        raise BenchError("Weft did not start:\n" + tail_text(log_path))
    return Server("weft", label, proc, port[0], log_path)


NGINX_CONF = """\
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {dir}/root/.body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location /stream/ {{
            root {dir}/root;
            dav_methods PUT;
        }}
    }}
}}
"""


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def start_nginx(procs: Procs, directory: Path, nginx: str) -> Server:
    """nginx as the static-file ceiling: WebDAV PUT stores a body, GET uses sendfile."""
    for sub in ("root/stream", "root/.body", "tmp"):
        (directory / sub).mkdir(parents=True)
    port = free_port()
    # Run as root, nginx would hand its workers to "nobody", who cannot enter the
    # private temporary directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, dir=directory, port=port))
    log_path = directory / "error.log"
    with open(directory / "stderr.log", "wb") as stderr:
        proc = procs.spawn(
            [nginx, "-p", f"{directory}/", "-c", str(conf), "-e", str(log_path)]
            + ["-g", "daemon off;"],
            cwd=directory,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    server = Server(
        "nginx", f"{version.split(': ')[-1]} (PUT → file, GET sendfile)", proc, port, log_path
    )
    server.upload_method = "PUT"
    try:
        wait_listening(port, proc, "nginx")
    except BenchError:
        procs.stop(proc)
        raise
    return server


def start_python_reference(procs: Procs, directory: Path) -> Server:
    """bench/reference_server.py: the ceiling when nginx is not installed."""
    (directory / "root").mkdir(parents=True)
    log_path = directory / "server.log"
    with open(log_path, "wb") as log:
        proc = procs.spawn(
            [sys.executable, str(BENCH / "reference_server.py"), str(directory / "root")],
            cwd=directory,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    assert proc.stdout is not None
    match = re.match(r"listening (\d+)", proc.stdout.readline().decode())
    if not match:
        procs.stop(proc)
        raise BenchError("the Python reference did not start:\n" + tail_text(log_path))
    return Server(
        "pyref", "built-in Python server (os.write / os.sendfile)", proc, int(match[1]), log_path
    )


def install_piping(notes: list[str]) -> Path | None:
    """piping-server 1.x from the npm registry into bench/out/cache (kept between
    runs); None, with a note, when node or npm is missing or the install fails."""
    root = CACHE_DIR / "piping-server"
    entry = root / "node_modules" / "piping-server" / "dist" / "src" / "index.js"
    if entry.exists():
        return entry
    if shutil.which("node") is None or shutil.which("npm") is None:
        notes.append("piping-server skipped: node or npm is not installed")
        return None
    root.mkdir(parents=True, exist_ok=True)
    print("installing piping-server@1 with npm into bench/out/cache ...", flush=True)
    try:
        done = subprocess.run(
            ["npm", "install", "--prefix", str(root), "--no-audit", "--no-fund"]
            + ["--loglevel=error", "piping-server@1"],
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        notes.append(f"piping-server skipped: npm install failed ({exc})")
        return None
    if done.returncode != 0 or not entry.exists():
        reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        notes.append(f"piping-server skipped: npm install failed ({reason[0]})")
        return None
    return entry


def start_piping(procs: Procs, directory: Path, entry: Path) -> Server:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = directory / "piping.log"
    with open(log_path, "wb") as log:
        proc = procs.spawn(
            ["node", str(entry), "--host", "127.0.0.1", "--http-port", str(port)],
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    package = json.loads((entry.parents[2] / "package.json").read_text())
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    server = Server(
        "piping", f"piping-server {package['version']} (node {node})", proc, port, log_path
    )
    try:
        wait_listening(port, proc, "piping-server")
    except BenchError:
        procs.stop(proc)
        raise
    return server
