"""What the block checksums cost (SPEC §8 "Integrity", issue 9).

Two Weft servers on the embedded defaults run side by side: the real one, and
the same code with the checksums switched off (no CRC on append, no sidecar
write, no verification on read, though the empty sidecar is still looked at;
started through this module's ``--serve``).
Each run, alternating which goes first, curl POSTs the same file of random bytes
to each (ingest) and GETs it back to /dev/null (replay); MB/s is 10^6 bytes per
second of curl's transfer time, and the server's CPU seconds per GiB (steadier
than MB/s on a shared machine). Prints medians and checked/unchecked ratios.

Run: .venv/bin/python bench/checksums.py [--size MIB] [--runs N] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `app` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import MB, MIB, Procs, cpu_seconds, curl, http_json
from bench.servers import Server, start_weft
from bench.throughput import make_source, reread


def serve_unchecked(argv: list[str]) -> int:
    """``python -m app`` with checksums off: the reference this benchmark compares to."""
    from app.__main__ import main
    from app.storage.segments import LocalSegmentStore, LocalSegmentWriter

    def no_checksum(self: LocalSegmentWriter, piece: memoryview, used: int) -> None:
        return None

    def unverified(
        self: LocalSegmentStore,
        key: str,
        index: int,
        data: memoryview,
        sidecar: memoryview | None,
        base: int,
        start: int,
        end: int,
    ) -> memoryview:
        return data[start - base : end - base]

    LocalSegmentWriter._checksum = no_checksum  # type: ignore[method-assign]
    LocalSegmentStore._checked = unverified  # type: ignore[method-assign]
    return main(argv)


def one_run(server: Server, run: int, source: Path, size: int, sha256: str) -> dict[str, float]:
    url = f"{server.url}/stream/bench-{run}"
    reread(source)
    cpu = cpu_seconds(server.pid)
    status, ingest_s, sent, _, body = curl(["-X", "POST", "-T", str(source), url])
    ingest_cpu = cpu_seconds(server.pid) - cpu
    reply: dict[str, Any] = json.loads(body)
    if status != 201 or sent != size or reply.get("sha256") != sha256:
        raise SystemExit(f"{server.label}: ingest answered {status} {reply}")
    cpu = cpu_seconds(server.pid)
    status, replay_s, _, received, _ = curl(["-o", "/dev/null", url])
    replay_cpu = cpu_seconds(server.pid) - cpu
    if status != 200 or received != size:
        raise SystemExit(f"{server.label}: replay answered {status} with {received} bytes")
    http_json("DELETE", url)
    gib = size / (1 << 30)
    return {
        "ingest": size / MB / ingest_s,
        "replay": size / MB / replay_s,
        "ingest_cpu": ingest_cpu / gib,
        "replay_cpu": replay_cpu / gib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB per stream (default 1024)")
    parser.add_argument("--runs", type=int, default=5, help="runs per server (default 5)")
    parser.add_argument("--tmp", help="parent of the temporary directory")
    args = parser.parse_args()
    size = args.size * MIB
    procs = Procs()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        directory = Path(tmp)
        source = directory / "source"
        sha256 = make_source(source, size)
        checked = start_weft(procs, directory / "checked", label="checksums")
        unchecked = start_weft(
            procs,
            directory / "unchecked",
            label="no checksums",
            module=["bench.checksums", "--serve"],
        )
        figures: dict[str, list[dict[str, float]]] = {checked.label: [], unchecked.label: []}
        try:
            for run in range(args.runs):
                order = (checked, unchecked) if run % 2 == 0 else (unchecked, checked)
                for server in order:
                    figures[server.label].append(one_run(server, run, source, size, sha256))
        finally:
            procs.stop_all()
    print(f"{args.size} MiB per stream, median of {args.runs} runs")
    print(f"{'':<22}{'checksums':>10}{'none':>10}{'ratio':>8}   runs (checksums/none)")
    rows = [
        ("ingest MB/s", "ingest", 0),
        ("replay MB/s", "replay", 0),
        ("ingest server CPU s/GiB", "ingest_cpu", 2),
        ("replay server CPU s/GiB", "replay_cpu", 2),
    ]
    for name, metric, digits in rows:
        on = [run[metric] for run in figures[checked.label]]
        off = [run[metric] for run in figures[unchecked.label]]
        ratio = statistics.median(on) / statistics.median(off)
        detail = " ".join(f"{a:.{digits}f}/{b:.{digits}f}" for a, b in zip(on, off, strict=True))
        print(
            f"{name:<22}{statistics.median(on):>10.{digits}f}{statistics.median(off):>10.{digits}f}"
            f"{ratio:>8.2f}   {detail}"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        sys.exit(serve_unchecked(sys.argv[2:]))
    main()
