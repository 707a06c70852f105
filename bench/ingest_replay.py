"""Ingest and replay throughput of one large stream, Weft against a reference server.

    .venv/bin/python bench/ingest_replay.py [--size-mib N] [--runs N] [--quick]

One run sends a file of random bytes to the server with curl (ingest), then reads
it back with curl (replay), once against Weft and once against a reference that
does the least a server can: nginx (WebDAV PUT into a file, static GET with
sendfile) when it is installed, otherwise a minimal Python socket server built in
here (os.write of the body, os.sendfile for GET). Results are MB/s (10^6 bytes
per second) and ratios Weft/reference, which hold on a noisy machine where
absolute figures do not.

Page-cache traps on small virtual machines shape the procedure: freed memory
that sits idle is slow to fill again, and files untouched for ~30 s leave the
page cache. So the systems alternate run by run (Weft, reference, Weft, ...),
the previous run's output is deleted just before the next run starts, and the
source file is re-read before each run.

Every process started here, and the temporary directory, are removed on exit,
including on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "bench" / "out"
MB = 1_000_000
MIB = 1 << 20
BLOCK = 8 * MIB
START_TIMEOUT = 30.0
WEFT_READY = re.compile(r"Uvicorn running on http://[^:]+:(\d+)")


class Interrupted(Exception):
    """SIGTERM or SIGHUP: unwind through the cleanup like Ctrl-C does."""


def _on_signal(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


try:
    _LIBC: Any = ctypes.CDLL(None, use_errno=True)  # loaded before any fork
except OSError:
    _LIBC = None


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the bench itself dies (Linux only)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} at start")
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {START_TIMEOUT:.0f} s")


# -- servers ----------------------------------------------------------------------


@dataclass
class Server:
    """A server process under test. ``upload_method`` is what curl sends with -T."""

    name: str
    label: str
    proc: subprocess.Popen[bytes]
    port: int
    upload_method: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "".join(self.log_path.read_text(errors="replace").splitlines(True)[-lines:])
        return ""


def start_weft(work: Path, fsync: str) -> Server:
    directory = work / "weft"
    directory.mkdir()
    config = directory / "config.yaml"
    config.write_text(
        f"data_dir: {json.dumps(str(directory / 'data'))}\n"
        "log_level: info\n"
        f"durability:\n  fsync: {fsync}\n"
    )
    log_path = directory / "server.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WEFT_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "--port", "0", "--config", str(config)],
        cwd=directory,
        env=environ,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    port: list[int] = []
    ready = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        with open(log_path, "wb") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                match = WEFT_READY.search(line.decode(errors="replace"))
                if match and not port:
                    port.append(int(match.group(1)))
                    ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    server = Server("weft", f"weft (durability.fsync={fsync})", proc, 0, "POST", log_path)
    if not ready.wait(START_TIMEOUT) or not port:
        server.stop()
        raise RuntimeError("Weft did not start:\n" + server.log_tail())
    server.port = port[0]
    return server


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


def start_nginx(work: Path, nginx: str) -> Server:
    directory = work / "nginx"
    for sub in ("root/stream", "root/.body", "tmp"):
        (directory / sub).mkdir(parents=True)
    port = _free_port()
    # Run as root, nginx would hand its workers to "nobody", who cannot enter the
    # private temporary directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, dir=directory, port=port))
    log_path = directory / "error.log"
    proc = subprocess.Popen(
        [nginx, "-p", f"{directory}/", "-c", str(conf), "-e", str(log_path), "-g", "daemon off;"],
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(directory / "stderr.log", "wb"),  # noqa: SIM115 - closed with the process
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    server = Server(
        "nginx", f"{version.split(': ')[-1]} (WebDAV PUT, sendfile)", proc, port, "PUT", log_path
    )
    try:
        _wait_listening(port, proc, "nginx")
    except RuntimeError:
        server.stop()
        raise
    return server


def start_python_reference(work: Path) -> Server:
    directory = work / "pyref"
    (directory / "root").mkdir(parents=True)
    log_path = directory / "server.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("reference_server.py")),
            str(directory / "root"),
        ],
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = re.match(r"listening (\d+)", line)
    server = Server(
        "pyref", "built-in Python server (os.write / os.sendfile)", proc, 0, "POST", log_path
    )
    if not match:
        server.stop()
        raise RuntimeError("the Python reference did not start:\n" + server.log_tail())
    server.port = int(match.group(1))
    return server


# -- measuring --------------------------------------------------------------------


@dataclass
class Measurement:
    run: int
    system: str
    stream: str
    source_read_mb_s: float
    ingest_seconds: float
    ingest_mb_s: float
    replay_seconds: float
    replay_mb_s: float
    ingest_server_cpu_s: float  # CPU time (user + system) of the server's processes
    replay_server_cpu_s: float
    ingest_status: int
    replay_status: int
    checks: list[str] = field(default_factory=list)


def make_source(path: Path, size: int) -> str:
    """Random bytes; returns their SHA-256 (Weft reports it back after ingest)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(BLOCK, left))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


def prime(source: Path, scratch: Path) -> None:
    """Write a copy of the source, to be deleted just before the first run: then the
    first run, like every later one, writes into memory that was freed a moment ago
    rather than into memory that sat idle (slow to fill on these virtual machines)."""
    with open(source, "rb", buffering=0) as src, open(scratch, "wb", buffering=0) as dst:
        buffer = bytearray(BLOCK)
        while got := src.readinto(buffer):
            dst.write(memoryview(buffer)[:got])


def reread(path: Path) -> float:
    """Read the whole file so it sits in the page cache; return MB/s."""
    buffer = bytearray(BLOCK)
    total = 0
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as source:
        while got := source.readinto(buffer):
            total += got
    return total / MB / (time.perf_counter() - started)


def curl(args: list[str]) -> tuple[int, float, int, int, str]:
    """Run curl; return (HTTP status, seconds as curl timed the transfer, bytes uploaded,
    bytes downloaded, response body)."""
    marker = "\n@@bench@@"
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-w",
            marker + "%{http_code} %{time_total} %{size_upload} %{size_download}",
            *args,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    body, _, stats = result.stdout.rpartition(marker)
    if result.returncode != 0 or not stats:
        raise RuntimeError(f"curl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    code, seconds, uploaded, downloaded = stats.split()
    return int(code), float(seconds), int(float(uploaded)), int(float(downloaded)), body


def delete_output(server: Server, stream: str, work: Path) -> None:
    if server.name == "weft":
        request = urllib.request.Request(f"{server.url}/stream/{stream}", method="DELETE")
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=60).close()
    elif server.name == "nginx":
        with contextlib.suppress(FileNotFoundError):
            (work / "nginx" / "root" / "stream" / stream).unlink()
    else:
        with contextlib.suppress(FileNotFoundError):
            (work / "pyref" / "root" / stream).unlink()


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads and its live child
    processes (nginx's workers), from /proc; 0.0 where /proc is missing. Unlike
    MB/s, it hardly moves when other work competes for the CPUs."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(child) for child in children)
        except (OSError, IndexError, ValueError):
            continue
    return total / CLOCK_TICKS


def measure(server: Server, run: int, source: Path, size: int, sha256: str) -> Measurement:
    stream = f"bench-{run}"
    url = f"{server.url}/stream/{stream}"
    source_speed = reread(source)
    upload = (
        ["-T", str(source), url]
        if server.upload_method == "PUT"
        else ["-X", "POST", "-T", str(source), url]
    )
    pid = server.proc.pid
    cpu_before = cpu_seconds(pid)
    ingest_status, ingest_s, sent, _, body = curl(upload)
    cpu_ingested = cpu_seconds(pid)
    replay_status, replay_s, _, received, _ = curl(["-o", "/dev/null", url])
    cpu_replayed = cpu_seconds(pid)
    checks = []
    if ingest_status not in (200, 201, 204):
        checks.append(f"ingest answered {ingest_status}")
    if sent != size:
        checks.append(f"curl sent {sent} bytes, not {size}")
    if server.name == "weft":
        with contextlib.suppress(ValueError):
            reply = json.loads(body)
            if reply.get("size") != size or reply.get("sha256") != sha256:
                checks.append(f"weft stored {reply}")
    if replay_status != 200:
        checks.append(f"replay answered {replay_status}")
    if received != size:
        checks.append(f"replay returned {received} bytes, not {size}")
    return Measurement(
        run=run,
        system=server.name,
        stream=stream,
        source_read_mb_s=round(source_speed, 1),
        ingest_seconds=round(ingest_s, 4),
        ingest_mb_s=round(size / MB / ingest_s, 1),
        replay_seconds=round(replay_s, 4),
        replay_mb_s=round(size / MB / replay_s, 1),
        ingest_server_cpu_s=round(cpu_ingested - cpu_before, 2),
        replay_server_cpu_s=round(cpu_replayed - cpu_ingested, 2),
        ingest_status=ingest_status,
        replay_status=replay_status,
        checks=checks,
    )


# -- reporting --------------------------------------------------------------------


METRICS = ("ingest_mb_s", "replay_mb_s", "ingest_server_cpu_s", "replay_server_cpu_s")


def summarize(results: list[Measurement], weft: str, reference: str) -> dict[str, Any]:
    """Medians per system, and Weft's median over the reference's for each metric
    (above 1 is better for MB/s, worse for CPU seconds)."""
    summary: dict[str, Any] = {}
    for system in (weft, reference):
        rows = [asdict(r) for r in results if r.system == system]
        summary[system] = {
            f"{metric}_median": round(statistics.median(row[metric] for row in rows), 2)
            for metric in METRICS
        }
    summary["ratio_weft_over_reference"] = {
        metric: (
            round(summary[weft][f"{metric}_median"] / summary[reference][f"{metric}_median"], 3)
            if summary[reference][f"{metric}_median"]
            else None
        )
        for metric in METRICS
    }
    return summary


def print_table(results: list[Measurement], summary: dict[str, Any], weft: str, ref: str) -> None:
    columns = ("source read", "ingest MB/s", "replay MB/s", "ingest CPU s", "replay CPU s")
    print()
    print(f"{'':<17}" + "".join(f"{c:>13}" for c in columns))
    for r in results:
        flag = "  !! " + "; ".join(r.checks) if r.checks else ""
        print(
            f"{f'run {r.run} {r.system}':<17}{r.source_read_mb_s:>13.0f}"
            f"{r.ingest_mb_s:>13.1f}{r.replay_mb_s:>13.1f}"
            f"{r.ingest_server_cpu_s:>13.2f}{r.replay_server_cpu_s:>13.2f}{flag}"
        )
    for system in (weft, ref):
        m = summary[system]
        print(
            f"{f'median {system}':<17}{'':>13}"
            f"{m['ingest_mb_s_median']:>13.1f}{m['replay_mb_s_median']:>13.1f}"
            f"{m['ingest_server_cpu_s_median']:>13.2f}{m['replay_server_cpu_s_median']:>13.2f}"
        )
    ratio = summary["ratio_weft_over_reference"]
    cells = "".join(
        f"{ratio[metric]:>13.3f}" if ratio[metric] is not None else f"{'-':>13}"
        for metric in METRICS
    )
    print(f"{f'ratio {weft}/{ref}':<17}{'':>13}{cells}")


def tool_version(command: list[str]) -> str:
    with contextlib.suppress(OSError):
        done = subprocess.run(command, capture_output=True, text=True)
        return (done.stdout or done.stderr).splitlines()[0].strip()
    return "unknown"


# -- main -------------------------------------------------------------------------


@contextlib.contextmanager
def cleanup_on_exit(work: Path, servers: list[Server]) -> Iterator[None]:
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()
        shutil.rmtree(work, ignore_errors=True)
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="stream size (default 1024)")
    parser.add_argument("--runs", type=int, default=3, help="runs per system (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke check: 64 MiB, 1 run")
    parser.add_argument(
        "--reference",
        choices=("auto", "nginx", "python"),
        default="auto",
        help="auto: nginx when installed, else the built-in Python server",
    )
    parser.add_argument(
        "--fsync",
        choices=("always", "interval", "never"),
        default="interval",
        help="Weft's durability.fsync (default: interval, Weft's default)",
    )
    parser.add_argument("--tmp", help="parent of the temporary directory (default: system temp)")
    parser.add_argument("--out", help="JSON result file (default: bench/out/ingest_replay-*.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mib, args.runs = 64, 1
    if args.size_mib < 1 or args.runs < 1:
        parser.error("--size-mib and --runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("curl") is None:
        print("ingest_replay: curl is required", file=sys.stderr)
        return 2
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if args.reference == "nginx" and nginx is None:
        print("ingest_replay: nginx is not installed", file=sys.stderr)
        return 2
    use_nginx = nginx is not None and args.reference != "python"

    size = args.size_mib * MIB
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="weft-bench-", dir=args.tmp))
    servers: list[Server] = []
    results: list[Measurement] = []
    with cleanup_on_exit(work, servers):
        try:
            source = work / "source.bin"
            print(f"making {args.size_mib} MiB of random bytes in {work} ...", flush=True)
            sha256 = make_source(source, size)
            weft = start_weft(work, args.fsync)
            servers.append(weft)
            if use_nginx and nginx:
                reference = start_nginx(work, nginx)
            else:
                reference = start_python_reference(work)
            servers.append(reference)
            print(f"weft:      {weft.label} on {weft.url}")
            print(f"reference: {reference.label} on {reference.url}")
            print(f"size {args.size_mib} MiB x {args.runs} runs, systems alternate run by run")

            scratch = work / "prime.bin"
            prime(source, scratch)
            previous: tuple[Server, str] | None = None
            for run in range(1, args.runs + 1):
                for server in (weft, reference):
                    # The previous run's output goes just before this run starts.
                    if previous is not None:
                        delete_output(previous[0], previous[1], work)
                    else:
                        scratch.unlink()
                    m = measure(server, run, source, size, sha256)
                    previous = (server, m.stream)
                    results.append(m)
                    print(
                        f"  run {run} {m.system:<6} ingest {m.ingest_mb_s:8.1f} MB/s  "
                        f"replay {m.replay_mb_s:8.1f} MB/s  "
                        f"server CPU {m.ingest_server_cpu_s:.2f} s + {m.replay_server_cpu_s:.2f} s"
                        + (f"  !! {'; '.join(m.checks)}" if m.checks else ""),
                        flush=True,
                    )
        except (KeyboardInterrupt, Interrupted) as exc:
            print(f"\ninterrupted ({type(exc).__name__}); cleaning up", file=sys.stderr)
            return 130
        except RuntimeError as exc:
            print(f"ingest_replay: {exc}", file=sys.stderr)
            return 1

    summary = summarize(results, weft.name, reference.name)
    print_table(results, summary, weft.name, reference.name)
    load_after = os.getloadavg()
    print(
        f"\nload average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after, "
        f"on {os.cpu_count()} CPUs; MB/s suffers from other work, server CPU s much less"
    )
    report = {
        "benchmark": "ingest_replay",
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "size_bytes": size,
        "runs": args.runs,
        "mb": "10^6 bytes",
        "weft": weft.label,
        "reference": reference.label,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "curl": tool_version(["curl", "--version"]),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
        },
        "results": [asdict(r) for r in results],
        "summary": summary,
    }
    out = (
        Path(args.out)
        if args.out
        else OUT_DIR / (f"ingest_replay-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    failed = [r for r in results if r.checks]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
