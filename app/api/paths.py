"""Stream ids that arrive percent-encoded with a slash (SPEC §1).

Routing matches the decoded path, so ``/stream/a%2Fb`` would look like two
segments (a 404, or Loom's build reaper for ``build%2F42``) and ``/stream/%2F``
like a trailing slash (a redirect). An id never holds a slash: such a request
is a bad id, answered before any route sees it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_response
from app.streams.models import ID_RULE

_ID_PREFIXES = (b"/stream/", b"/streams/", b"/files/", b"/ui/stream/")


class EncodedSlashGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope["path"].encode()
            if raw.startswith(_ID_PREFIXES) and b"%2f" in raw.lower():
                await error_response(400, ID_RULE)(scope, receive, send)
                return
        await self.app(scope, receive, send)
