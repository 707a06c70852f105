"""What every scenario gets: the temporary directory, the process registry, the mode."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import REPO, Procs, Worker
from bench.servers import (
    Server,
    find_nginx,
    install_piping,
    launch_weft,
    start_nginx,
    start_piping,
    start_python_reference,
    start_weft,
)

_UNSET = Path("/nonexistent-unset")


@dataclass
class Context:
    work: Path
    procs: Procs
    quick: bool
    runs: int | None  # --runs; None: each scenario's default
    reference: str = "auto"  # auto | nginx | python
    profile_dir: Path | None = None  # --profile: py-spy records every Weft server here
    notes: list[str] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)
    _profilers: dict[int, tuple[subprocess.Popen[Any], Path]] = field(default_factory=dict)
    _piping_entry: Path | None = _UNSET
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def runs_for(self, default: int) -> int:
        if self.runs is not None:
            return self.runs
        return 1 if self.quick else default

    def directory(self, name: str) -> Path:
        path = self.work / f"{name}-{next(self._ids)}"
        path.mkdir(parents=True)
        return path

    def weft(self, name: str, settings: dict[str, Any] | None = None) -> Server:
        """A fresh Weft (new data_dir, new process) for one scenario; ``settings``:
        configuration keys beyond data_dir."""
        server = start_weft(self.procs, self.directory(name) / "weft", settings=settings)
        if self.profile_dir is not None:
            self._profile(server, name)
        return server

    def restart(self, server: Server, name: str) -> Server:
        """Stop a Weft and start it again on the same configuration and data."""
        self.stop(server)
        again = launch_weft(self.procs, server.log_path.parent, server.label)
        if self.profile_dir is not None:
            self._profile(again, name)
        return again

    def _profile(self, server: Server, name: str) -> None:
        """py-spy record (100 Hz, non-blocking, collapsed stacks) until the server exits."""
        found = shutil.which("py-spy") or str(REPO / ".venv" / "bin" / "py-spy")
        if not Path(found).exists():
            self.note("--profile: py-spy is not installed (pip install py-spy); no profiles")
            return
        assert self.profile_dir is not None
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        out = self.profile_dir / f"{name}-{server.pid}.txt"
        with open(self.profile_dir / f"{name}-{server.pid}.log", "wb") as log:
            proc = self.procs.spawn(
                [found, "record", "--pid", str(server.pid), "--rate", "100", "--format", "raw"]
                + ["--nolineno", "--nonblocking", "--output", str(out)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._profilers[server.pid] = (proc, out)

    def static_reference(self) -> Server:
        nginx = find_nginx()
        if self.reference == "nginx" and nginx is None:
            raise RuntimeError("--reference nginx: nginx is not installed")
        if nginx is not None and self.reference != "python":
            return start_nginx(self.procs, self.directory("nginx"), nginx)
        if self.reference == "auto":
            self.note("nginx is not installed: the static reference is bench/reference_server.py")
        return start_python_reference(self.procs, self.directory("pyref"))

    def piping(self) -> Server | None:
        """A piping-server, or None (with a note) when it cannot be installed."""
        if self._piping_entry == _UNSET:
            self._piping_entry = install_piping(self.notes)
        if self._piping_entry is None:
            return None
        return start_piping(self.procs, self.directory("piping"), self._piping_entry)

    def worker(self, name: str, args: list[str]) -> Worker:
        return Worker(self.procs, name, args, self.directory(f"log-{name}"))

    def stop(self, *servers: Server | Worker | None) -> None:
        for server in servers:
            if server is not None:
                self.procs.stop(server.proc)
                if server.proc.pid in self._profilers:
                    self._collect_profile(*self._profilers.pop(server.proc.pid))

    def _collect_profile(self, proc: subprocess.Popen[Any], out: Path) -> None:
        """py-spy writes its file once the server is gone; print the top self-time frames."""
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        self.procs.stop(proc)
        if not out.exists():
            self.note(f"--profile: py-spy wrote no {out.name}")
            return
        own: Counter[str] = Counter()
        weft: Counter[str] = Counter()  # inclusive time of Weft's own functions
        total = 0
        for line in out.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            frames = [f for f in stack.split(";") if f.strip()]
            total += int(count)
            if frames:
                own[frames[-1]] += int(count)
            for frame in set(frames):
                if "(app/" in frame and "(app/serve.py)" not in frame:
                    weft[frame] += int(count)

        def top(counter: Counter[str], n: int) -> list[tuple[str, float]]:
            return [(f, round(100 * c / max(total, 1), 1)) for f, c in counter.most_common(n)]

        self.profiles.append(
            {
                "file": str(out),
                "samples": total,
                "top_self_pct": top(own, 15),
                "top_weft_inclusive_pct": top(weft, 15),
            }
        )
        print(f"  profile {out.name}: {total} busy samples at 100 Hz (all threads)")
        for title, rows in (("self time", top(own, 8)), ("Weft, inclusive", top(weft, 8))):
            print(f"    {title}:")
            for frame, pct in rows:
                print(f"      {pct:5.1f}%  {frame}")

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
