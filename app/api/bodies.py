"""Reading JSON request bodies within a bound (SPEC §7: over 64 KiB is 413)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from app.errors import InvalidInput, TooLarge
from app.streams.models import parse_count

JSON_BODY_LIMIT = 64 * 1024


async def read_json(request: Request, limit: int = JSON_BODY_LIMIT) -> Any:
    """The body as JSON. Refuses with 413 from Content-Length before reading, or as
    soon as a chunked body passes the limit, so memory stays bounded."""
    too_large = TooLarge(f"A JSON request body may be at most {limit} bytes.")
    declared = parse_count(request.headers.get("content-length"), "Content-Length")
    if declared is not None and declared > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidInput("The request body is not valid JSON.") from None
