"""Cost of the limits.min_free_bytes check on the per-chunk path (issue 9).

Prints, per 64 KiB chunk: the cached DiskSpace.require() + consumed(), a raw
os.statvfs (what checking every chunk would cost) and, as the reference, the
os.write of the chunk itself to a file in the same directory; ratios are
against that write. Run: .venv/bin/python bench/space_check.py [DIR]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from app.storage.space import DiskSpace

CHUNK = 64 * 1024
ROUNDS = 20_000


def per_call(work: Callable[[], object], rounds: int = ROUNDS) -> float:
    best = float("inf")
    for _ in range(3):  # best of 3: the machine is shared
        start = time.perf_counter()
        for _ in range(rounds):
            work()
        best = min(best, (time.perf_counter() - start) / rounds)
    return best


def main() -> None:
    parent = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        directory = Path(tmp)
        disk = DiskSpace(directory, min_free_bytes=64 * 1024 * 1024)
        chunk = b"x" * CHUNK
        fd = os.open(directory / "segment", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

        def write() -> None:
            os.write(fd, chunk)
            if os.lseek(fd, 0, os.SEEK_CUR) > 256 * 1024 * 1024:
                os.ftruncate(fd, 0)

        def guarded() -> None:
            disk.require()
            disk.consumed(CHUNK)

        reference = per_call(write, 5_000)
        os.close(fd)
        cached = per_call(guarded)
        raw = per_call(lambda: os.statvfs(directory))
    print(f"{'per 64 KiB chunk':<38}{'µs':>8}{'vs write':>10}")
    rows = [
        ("os.write of the chunk (reference)", reference),
        ("DiskSpace.require + consumed (cached)", cached),
        ("os.statvfs every chunk", raw),
    ]
    for name, seconds in rows:
        print(f"{name:<38}{seconds * 1e6:>8.2f}{seconds / reference:>10.3f}")


if __name__ == "__main__":
    main()
