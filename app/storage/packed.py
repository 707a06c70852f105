"""Compressed segment files on local disk (issue 12): which file holds a
segment, turning a sealed raw segment into its compressed form crash-safely,
and back (a trim), and settling what a crash left (app/storage/segments.py
explains the states; app/storage/frames.py the format). Blocking functions:
run them in a thread."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

from app.storage import frames
from app.storage.blocks import BLOCK, SUFFIX, parse, scan, verify
from app.storage.frames import BadFrames

log = logging.getLogger("weft.store")


def _segment_name(index: int) -> str:
    return f"{index:08d}"


def segment_index(name: str) -> int | None:
    """The segment a file of a stream's directory belongs to (None: not one)."""
    for suffix in (frames.TEMP, frames.SUFFIX, SUFFIX):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return int(name) if name.isdigit() else None


def segment_files(directory: Path) -> dict[int, Path]:
    """Every segment of a directory and the file that holds it: the raw one, or
    its compressed form when only that is there. Raises FileNotFoundError."""
    found: dict[int, Path] = {}
    for path in directory.iterdir():
        name = path.name
        if name.isdigit():
            found[int(name)] = path
        elif name.endswith(frames.SUFFIX) and name[: -len(frames.SUFFIX)].isdigit():
            found.setdefault(int(name[: -len(frames.SUFFIX)]), path)
    return dict(sorted(found.items()))


def content_length(path: Path) -> int:
    """The uncompressed length of a segment file in either form."""
    if not path.name.endswith(frames.SUFFIX):
        return path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        return frames.read_index(fd).size
    finally:
        os.close(fd)


def lowest_priority() -> None:
    """Run the calling thread at nice 19 (Linux nices threads one by one): the
    compression of sealed segments must not take CPU from producers and readers."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def compress_segment(directory: Path, index: int) -> Path | None:
    """Replace a sealed raw segment by its compressed form (crash-safe, see the
    module docstring); return the compressed file, or None when there is no
    segment or its bytes fail their checksums (then it stays raw, for
    verify and recovery to report). Blocking: run it in a thread."""
    name = _segment_name(index)
    raw, packed = directory / name, directory / f"{name}{frames.SUFFIX}"
    temp = directory / f"{name}{frames.TEMP}"
    if not packed.exists():
        try:
            sums = parse(Path(f"{raw}{SUFFIX}").read_bytes())
        except FileNotFoundError:
            sums = None  # a segment of a version before checksums

        def check(offset: int, piece: bytes) -> None:
            if sums is None:
                return
            good, bad = verify(sums, piece, offset // BLOCK, -(-len(piece) // BLOCK))
            if bad is not None or good != len(piece):
                raise BadFrames(f"segment {index} fails its checksums")

        try:
            if sums is not None and raw.stat().st_size != sums.covered:
                raise BadFrames(f"segment {index} is not what its checksums cover")
            frames.compress_file(str(raw), str(temp), check=check)
        except FileNotFoundError:
            temp.unlink(missing_ok=True)
            return None
        except BadFrames as exc:
            temp.unlink(missing_ok=True)
            log.warning("compress_skipped dir=%s segment=%d reason=%s", directory.name, index, exc)
            return None
        try:
            os.rename(temp, packed)
        except FileNotFoundError:  # the stream was deleted meanwhile
            return None
        _fsync_dir(directory)
    raw.unlink(missing_ok=True)
    Path(f"{raw}{SUFFIX}").unlink(missing_ok=True)
    return packed


def decompress_segment(directory: Path, index: int) -> None:
    """Turn a compressed segment back into a raw one with its sidecar (a trim
    cuts into it). Blocking."""
    name = _segment_name(index)
    packed, raw = directory / f"{name}{frames.SUFFIX}", directory / name
    fd = os.open(packed, os.O_RDONLY)
    try:
        found = frames.read_index(fd)
        out = os.open(raw, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for frame in found.frames:
                end = frame.start + frame.length
                os.write(out, frames.read_range(fd, found, frame.start, end))
            sums = scan(out, found.size)
            os.fsync(out)
        finally:
            os.close(out)
    finally:
        os.close(fd)
    Path(f"{raw}{SUFFIX}").write_bytes(sums.encode())
    packed.unlink()


def tidy(directory: Path) -> None:
    """Settle what a crash in the middle of a compression left: a temp file
    goes, and a segment in both forms keeps the compressed one, losing the raw
    file and its checksums (either may be gone already: a kill between the two
    unlinks leaves the checksums alone). Blocking."""
    names = {path.name for path in directory.iterdir()}
    for name in names:
        if name.endswith(frames.TEMP):
            (directory / name).unlink(missing_ok=True)
        elif name.endswith(frames.SUFFIX):
            raw = name[: -len(frames.SUFFIX)]
            for left in (raw, f"{raw}{SUFFIX}"):
                if left in names:
                    (directory / left).unlink(missing_ok=True)
