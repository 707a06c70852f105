"""Weft's client library (stdlib + httpx): a resumable producer and a resuming reader.

- :class:`StreamWriter` / :class:`AsyncStreamWriter`: send bytes as they come to
  ``POST /stream[/{id}]``; resume with ``HEAD`` + ``PATCH`` after a drop (SPEC §4).
- :func:`tail` / :func:`atail`: read a stream from an offset, follow it while it
  is live, reconnect after a drop, yield every byte exactly once.
"""

from __future__ import annotations

from app.client.aio import AsyncStreamWriter
from app.client.common import Backoff, StreamResult
from app.client.errors import (
    ClientError,
    RetriesExhausted,
    StreamDeleted,
    StreamGone,
    StreamRefused,
    StreamReplaced,
)
from app.client.tail import atail, tail
from app.client.writer import StreamWriter

__all__ = [
    "AsyncStreamWriter",
    "Backoff",
    "ClientError",
    "RetriesExhausted",
    "StreamDeleted",
    "StreamGone",
    "StreamRefused",
    "StreamReplaced",
    "StreamResult",
    "StreamWriter",
    "atail",
    "tail",
]
