"""Weft's client library (stdlib + httpx): a resumable producer and a resuming reader.

- :class:`StreamWriter` / :class:`AsyncStreamWriter`: send bytes as they come to
  ``POST /stream[/{id}]``; resume with ``HEAD`` + ``PATCH`` after a drop (SPEC §4).
- :func:`tail` / :func:`atail`: read a stream from an offset, follow it while it
  is live, reconnect after a drop, yield every byte exactly once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.client.common import Backoff, StreamResult
from app.client.errors import (
    ClientError,
    RetriesExhausted,
    StreamDeleted,
    StreamGone,
    StreamRefused,
    StreamReplaced,
)
from app.client.writer import StreamWriter

if TYPE_CHECKING:
    from app.client.aio import AsyncStreamWriter
    from app.client.reader import atail, tail

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


def __getattr__(name: str) -> Any:
    """The asyncio writer and the readers need httpx (and asyncio): loaded on
    first use, so that the producer's path (bin/stream) starts without them."""
    if name == "AsyncStreamWriter":
        from app.client.aio import AsyncStreamWriter

        return AsyncStreamWriter
    if name in ("atail", "tail"):
        from app.client import reader

        return getattr(reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
