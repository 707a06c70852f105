"""Compression at rest (issue 12): ratio, ingest, background compression and
replay, ``compression: zstd`` against ``none`` in the same run.

Two Weft servers on the embedded defaults (64 MiB segments), one with
``compression: zstd``. Each run, alternating which goes first, and for each
corpus (a generated CI log: timestamps, ANSI colours, repeated paths, varying
numbers; and random bytes), curl POSTs the file (ingest MB/s from curl's
time), then the bench waits until no raw segment of the stream is left on
disk (the compression after sealing; its MB/s is the content size over the
time from the POST's end), reads ``stored_bytes`` from ``GET /streams/{id}``
(ratio = size / stored_bytes), and curl GETs the stream to /dev/null
(replay MB/s; identity, curl sends no Accept-Encoding) and once more with
``Accept-Encoding: zstd`` (on-the-fly encoding; zstd server only). The
SHA-256 in the POST's reply and the bytes replayed are checked. Server CPU
seconds (user + system, /proc) are shown per GiB for ingest + compression.

Run: .venv/bin/python -m bench.compression [--size MIB] [--runs N] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `app` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import MB, MIB, Procs, cpu_seconds, curl, http_json
from bench.servers import Server, start_weft
from bench.throughput import make_source, reread

LEVELS = ("\x1b[32mINFO\x1b[0m", "\x1b[33mWARN\x1b[0m", "\x1b[1;31mERROR\x1b[0m", "DEBUG")
STEPS = ("compile", "link", "test", "lint", "fetch", "cache", "upload")


def make_log(path: Path, size: int, seed: int = 1) -> str:
    """A CI-log-like file of size bytes; returns its SHA-256."""
    rng = random.Random(seed)
    paths = [
        f"/builds/group/project/src/{rng.choice(['core', 'api', 'ui', 'db'])}/"
        f"{rng.choice(['models', 'views', 'utils', 'tests'])}/file_{n}.py"
        for n in range(300)
    ]
    clock = 1_764_800_000.0
    digest = hashlib.sha256()
    written = 0
    with open(path, "wb") as out:
        while written < size:
            lines = []
            for _ in range(2000):
                clock += rng.expovariate(200)
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(clock))
                kind = rng.random()
                if kind < 0.6:
                    text = (
                        f"{rng.choice(STEPS)} {rng.choice(paths)}:{rng.randrange(2000)} "
                        f"ok in {rng.randrange(10000)} ms"
                    )
                elif kind < 0.85:
                    text = f"test_{rng.randrange(5000)} PASSED [{rng.randrange(100)}%]"
                else:
                    text = f"sha {rng.getrandbits(64):016x} bytes {rng.randrange(10**9)}"
                frac = int(clock * 1000) % 1000
                lines.append(f"{stamp}.{frac:03d}Z {rng.choice(LEVELS)} {text}\n")
            block = "".join(lines).encode()[: size - written]
            out.write(block)
            digest.update(block)
            written += len(block)
    return digest.hexdigest()


def raw_segments_left(server_dir: Path) -> bool:
    root = server_dir / "data" / "segments"
    return any(p.name.isdigit() for p in root.glob("*/*"))


def one_run(
    server: Server, server_dir: Path, run: int, corpus: str, source: Path, sha256: str
) -> dict[str, float]:
    size = source.stat().st_size
    url = f"{server.url}/stream/bench-{corpus}-{run}"
    reread(source)
    cpu = cpu_seconds(server.pid)
    status, ingest_s, sent, _, body = curl(["-X", "POST", "-T", str(source), url])
    ended = time.perf_counter()
    reply: dict[str, Any] = json.loads(body)
    if status != 201 or sent != size or reply.get("sha256") != sha256:
        raise SystemExit(f"{server.label}: ingest answered {status} {reply}")
    while server.label == "zstd" and raw_segments_left(server_dir):
        time.sleep(0.01)
    compress_s = time.perf_counter() - ended
    cpu = cpu_seconds(server.pid) - cpu
    _, info = http_json("GET", url.replace("/stream/", "/streams/"))
    stored = info["stored_bytes"]
    status, replay_s, _, received, _ = curl(["-o", "/dev/null", url])
    if status != 200 or received != size:
        raise SystemExit(f"{server.label}: replay answered {status} with {received} bytes")
    status, encoded_s, _, encoded, _ = curl(["-o", "/dev/null", "-H", "Accept-Encoding: zstd", url])
    if status != 200:
        raise SystemExit(f"{server.label}: encoded replay answered {status}")
    http_json("DELETE", url)
    return {
        "ratio": size / stored,
        "stored_mib": stored / MIB,
        "ingest": size / MB / ingest_s,
        "compress": size / MB / compress_s if compress_s > 0.02 else 0.0,
        "cpu": cpu / (size / (1 << 30)),
        "replay": size / MB / replay_s,
        "encoded": size / MB / encoded_s,
        "encoded_ratio": size / encoded,
    }


ROWS = [
    ("ratio size/stored_bytes", "ratio", 2),
    ("stored MiB", "stored_mib", 1),
    ("ingest MB/s", "ingest", 0),
    ("compressed after seal MB/s", "compress", 0),
    ("server CPU s/GiB (ingest+compr.)", "cpu", 2),
    ("replay MB/s (identity)", "replay", 0),
    ("replay, Accept-Encoding: zstd MB/s", "encoded", 0),
    ("  wire ratio of that replay", "encoded_ratio", 2),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="MiB per stream (default 256)")
    parser.add_argument("--runs", type=int, default=3, help="runs per server (default 3)")
    parser.add_argument("--tmp", help="parent of the temporary directory")
    args = parser.parse_args()
    size = args.size * MIB
    procs = Procs()
    figures: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        directory = Path(tmp)
        corpora = {
            "log": (directory / "log", make_log(directory / "log", size)),
            "random": (directory / "random", make_source(directory / "random", size)),
        }
        dirs = {"zstd": directory / "zstd", "none": directory / "none"}
        servers = {
            name: start_weft(procs, path, label=name, settings={"compression": name})
            for name, path in dirs.items()
        }
        try:
            for run in range(args.runs):
                order = ("zstd", "none") if run % 2 == 0 else ("none", "zstd")
                for corpus, (source, sha256) in corpora.items():
                    for name in order:
                        got = one_run(servers[name], dirs[name], run, corpus, source, sha256)
                        figures.setdefault((corpus, name), []).append(got)
        finally:
            procs.stop_all()
    print(f"{args.size} MiB per stream, median of {args.runs} runs, {os.cpu_count()} CPUs")
    for corpus in ("log", "random"):
        print(f"\n{corpus:<36}{'zstd':>9}{'none':>9}{'ratio':>7}   runs (zstd/none)")
        for label, metric, digits in ROWS:
            on = [r[metric] for r in figures[(corpus, "zstd")]]
            off = [r[metric] for r in figures[(corpus, "none")]]
            a, b = statistics.median(on), statistics.median(off)
            ratio = f"{a / b:7.2f}" if b else "      -"
            runs = " ".join(f"{x:.{digits}f}/{y:.{digits}f}" for x, y in zip(on, off, strict=True))
            print(f"{label:<36}{a:>9.{digits}f}{b:>9.{digits}f}{ratio}   {runs}")


if __name__ == "__main__":
    main()
