"""The client's exceptions: a refusal is final, a drop is retried, spent retries end it."""

from __future__ import annotations

import json


class ClientError(Exception):
    """Base of every error this client raises; ``str()`` is a sentence for a user."""


class StreamRefused(ClientError):
    """The server said no (400, 401, 403, 404, 409 taken, 413 ...): never retried.

    ``message`` is the server's own ``{"error": ...}`` text when it sent one."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{message} (HTTP {status})")


class StreamGone(ClientError):
    """The stream this writer created is no longer its own: deleted or replaced."""


class StreamReplaced(StreamGone):
    """Another producer replaced the stream (``force``) while this one wrote it."""


class StreamDeleted(StreamGone):
    """The stream was deleted while this producer wrote it."""


class RetriesExhausted(ClientError):
    """The connection kept failing until the backoff's retries were spent."""


class Retryable(Exception):
    """Internal: this attempt failed in a way another attempt may fix (a drop, a
    restart, 5xx, another producer still attached). Never escapes the client."""


def server_message(status: int, body: bytes, reason: str = "") -> str:
    """The ``error`` field of a JSON error body, else the text, else the reason phrase."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])
    return text[:500] or reason or f"HTTP {status}"


def is_retryable_status(status: int) -> bool:
    """409 here means "another producer is attached" or "offset moved": both pass.
    Callers handle 409 "id taken" on POST before asking."""
    return status >= 500 or status in (408, 409, 425, 429)
