"""Access log and request metrics, as plain ASGI middleware."""

from __future__ import annotations

import logging
import time
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import Metrics

log = logging.getLogger("weft.access")
# Share-link signatures, and tokens a client may put in the URL even though
# Weft reads them only from the Authorization header (SPEC §6).
SECRET_PARAMS = {"signature", "token", "access_token"}


def redacted_query(raw: bytes) -> str:
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    return urlencode([(k, "REDACTED" if k.lower() in SECRET_PARAMS else v) for k, v in pairs])


class AccessLog:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.metrics.latency.labels(scope["method"], _route(scope)).observe(
                    time.perf_counter() - started
                )
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = _route(scope)
            self.metrics.requests.labels(scope["method"], route, str(status or 500)).inc()
            query = redacted_query(scope.get("query_string", b""))
            log.info(
                "request method=%s path=%s%s status=%s duration_ms=%.1f",
                scope["method"],
                scope["path"].encode("unicode_escape").decode(),
                f"?{query}" if query else "",
                status or "-",
                (time.perf_counter() - started) * 1000,
            )


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
