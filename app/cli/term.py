"""Small pieces the CLIs share: human-readable sizes and durations, a status line.

A status line is redrawn in place with ``\\r`` (and cleared with ``ESC [K``) on
a terminal only; messages printed while it shows go above it.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO
from urllib.parse import quote, urlsplit

REDRAW_EVERY = 0.25  # seconds: a few redraws a second, never a flood


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def stream_url(base: str, stream_id: str) -> str:
    return f"{base.rstrip('/')}/stream/{quote(stream_id, safe='')}"


def viewer_url(base: str, stream_id: str) -> str:
    return f"{base.rstrip('/')}/ui/stream/{quote(stream_id, safe='')}"


def origin_of(base: str) -> str:
    parts = urlsplit(base)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}".rstrip("/")


class StatusLine:
    """One line redrawn in place on ``out`` (a terminal); thread-safe."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.shown = False
        self.last_draw = 0.0

    def draw(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        with self.lock:
            if not force and now - self.last_draw < REDRAW_EVERY:
                return
            self.last_draw = now
            self.out.write(f"\r{text}\x1b[K")
            self.out.flush()
            self.shown = True

    def message(self, text: str) -> None:
        """Print a line of its own above the status line."""
        with self.lock:
            prefix = "\r\x1b[K" if self.shown else ""
            self.out.write(f"{prefix}{text}\n")
            self.out.flush()
            self.shown = False
            self.last_draw = 0.0  # the next draw puts the status line back at once

    def clear(self) -> None:
        with self.lock:
            if self.shown:
                self.out.write("\r\x1b[K")
                self.out.flush()
                self.shown = False
