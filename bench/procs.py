"""Starting and stopping the processes of the bench suite, and reading /proc.

Every process is started in its own session (so its process group id is its pid)
and recorded in a :class:`Procs` registry, which stops each one by its process
group id at the end, on an exception, on Ctrl-C or SIGTERM, and at interpreter
exit. Children also get SIGTERM from the kernel if the bench itself dies
(PR_SET_PDEATHSIG), and start with the highest open-file limit allowed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
OUT_DIR = BENCH / "out"
CACHE_DIR = OUT_DIR / "cache"
MB = 1_000_000
MIB = 1 << 20
START_TIMEOUT = 30.0
WEFT_READY = re.compile(r"Uvicorn running on http://[^:]+:(\d+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A scenario could not run or finish; the suite records it and goes on."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: unwind through the cleanup like Ctrl-C does."""


def on_signal(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def python_for_servers() -> str:
    """The checkout's venv Python when there is one (Weft and uvloop live there)."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


try:
    _LIBC: Any = ctypes.CDLL(None, use_errno=True)  # loaded before any fork
except OSError:
    _LIBC = None


def _child_setup() -> None:
    """In the child before exec: die with the bench, and allow many open files
    (1,000 streams need thousands of sockets and segment files)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def fd_limit() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


class Procs:
    """Every process the suite started, to stop them all by process group id."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []
        self._lock = threading.Lock()

    def spawn(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(
            argv, start_new_session=True, preexec_fn=_child_setup, close_fds=True, **kwargs
        )
        with self._lock:
            self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout)
        # The group may outlive its leader (nginx workers, npm's children).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def stop_all(self) -> None:
        with self._lock:
            procs, self._procs = self._procs, []
        for proc in reversed(procs):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout=5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[Any], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} at start")
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"{what} did not listen on port {port} within {START_TIMEOUT:.0f} s")


def tail_text(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "".join(path.read_text(errors="replace").splitlines(True)[-lines:])
    return ""


# -- /proc ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads and its live child
    processes (nginx's workers), from /proc; 0.0 where /proc is missing."""
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


def machine_busy_seconds() -> float:
    """CPU time all CPUs spent busy (user, nice, system, irq, softirq) since boot."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    except (OSError, ValueError, IndexError):
        return 0.0
    return (user + nice + system + irq + softirq) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    """CPU time of this process and of every child process it has waited for."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS since the process started) in KiB."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                found[line.split(":")[0]] = int(line.split()[1])
    return found


class RssSampler:
    """Samples a process's VmRSS every ``period`` seconds on a thread."""

    def __init__(self, pid: int, period: float = 0.02) -> None:
        self.pid = pid
        self.period = period
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = memory_kb(self.pid).get("VmRSS")
            if rss is not None:
                self.samples.append((time.monotonic(), rss))
            self._stop.wait(self.period)

    def now_kb(self) -> int:
        return memory_kb(self.pid).get("VmRSS", 0)

    def peak_kb(self, since: float, until: float | None = None) -> int:
        end = until if until is not None else float("inf")
        return max((rss for t, rss in self.samples if since <= t <= end), default=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


# -- load-generator workers ------------------------------------------------------------------


class Worker:
    """A ``python -m bench.loadgen`` process: events come as stdout lines, commands go
    to stdin."""

    def __init__(self, procs: Procs, name: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.procs = procs
        self.log_path = log_dir / f"{name}.log"
        self._events: queue.Queue[str | None] = queue.Queue()
        with open(self.log_path, "wb") as log:
            self.proc = procs.spawn(
                [python_for_servers(), "-m", "bench.loadgen", *args],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()

    def _drain(self, stdout: IO[str]) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in stdout:
                self._events.put(line.rstrip("\n"))
        self._events.put(None)

    def expect(self, event: str, timeout: float) -> str:
        """Wait for the event line; return what follows its name."""
        found = self.poll(event, timeout)
        if found is None:
            raise BenchError(f"{self.name}: no '{event}' within {timeout:.0f} s")
        return found

    def poll(self, event: str, timeout: float) -> str | None:
        """Like expect, but None when the event does not come in time."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                line = self._events.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(5)
                raise BenchError(
                    f"{self.name} exited ({self.proc.returncode}) before '{event}':\n"
                    + tail_text(self.log_path)
                )
            name, _, rest = line.partition(" ")
            if name == event:
                return rest

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise BenchError(f"{self.name}: cannot send '{command}' ({exc})") from exc

    def result(self, timeout: float) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.expect("result", timeout))
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        return data

    def stop(self) -> None:
        self.procs.stop(self.proc, timeout=5)


def curl(args: list[str], *, stdin: Any = subprocess.DEVNULL) -> tuple[int, float, int, int, str]:
    """Run curl; return (HTTP status, seconds as curl timed the transfer, bytes
    uploaded, bytes downloaded, response body)."""
    marker = "\n@@bench@@"
    result = subprocess.run(
        ["curl", "-sS", "-w", marker + "%{http_code} %{time_total} %{size_upload} %{size_download}"]
        + args,
        stdin=stdin,
        capture_output=True,
        text=True,
    )
    body, _, stats = result.stdout.rpartition(marker)
    if result.returncode != 0 or not stats:
        raise BenchError(f"curl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    code, seconds, uploaded, downloaded = stats.split()
    return int(code), float(seconds), int(float(uploaded)), int(float(downloaded)), body


def http_json(method: str, url: str, timeout: float = 60) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw[:200]
