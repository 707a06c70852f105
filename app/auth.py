"""Bearer tokens with scopes (SPEC §6). Tokens are compared in constant time and never logged."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from app.config import Scope, TokenSpec
from app.errors import Forbidden, Unauthorized
from app.streams.models import parse_count


class Authenticator:
    def __init__(self, tokens: list[TokenSpec]) -> None:
        self._tokens = [(t.token.encode(), frozenset(t.scopes)) for t in tokens]

    @property
    def open(self) -> bool:
        """No tokens configured: every request is allowed (Loom's behaviour)."""
        return not self._tokens

    def scopes_for(self, authorization: str | None) -> frozenset[str]:
        """The scopes of the bearer token in an Authorization header. Raises Unauthorized."""
        if self.open:
            return frozenset(("read", "write", "admin"))
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise Unauthorized("A bearer token is required: send 'Authorization: Bearer TOKEN'.")
        candidate = presented.strip().encode()
        found: frozenset[str] | None = None
        # Compare with every token so the time taken does not tell which one was close.
        for token, scopes in self._tokens:
            if hmac.compare_digest(candidate, token):
                found = scopes
        if found is None:
            raise Unauthorized("The bearer token is not valid.")
        return found

    def allows(self, authorization: str | None, scope: Scope) -> bool:
        """Whether the token (already checked by require) has the scope."""
        try:
            return scope in self.scopes_for(authorization)
        except Unauthorized:
            return False

    def require(self, authorization: str | None, *allowed: Scope) -> None:
        """Pass when the token has any of the allowed scopes. Raises Unauthorized or Forbidden."""
        scopes = self.scopes_for(authorization)
        if not scopes.intersection(allowed):
            raise Forbidden(f"This token lacks the {' or '.join(allowed)} scope.")


class Signer:
    """Share links: HMAC-SHA256 over the stream id, its incarnation and the expiry
    (SPEC §6). The incarnation is the stream's storage key, new for every
    creation, so a link dies with its stream: deleting or replacing the id ends it."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, stream_id: str, incarnation: str, expires: int) -> str:
        message = f"{stream_id}\n{incarnation}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(
        self, stream_id: str, incarnation: str, ttl: float, now: float | None = None
    ) -> tuple[int, str]:
        expires = int((time.time() if now is None else now) + ttl)
        return expires, self._mac(stream_id, incarnation, expires)

    def verify(
        self,
        stream_id: str,
        incarnation: str | None,
        expires: str | None,
        signature: str | None,
    ) -> None:
        """Raise Forbidden unless the pair was signed for this incarnation of the
        stream (None: there is none now) and has not expired; InvalidInput for an
        expiry that is not a number."""
        when = parse_count(expires, "expires")
        if when is None or not signature or incarnation is None:
            raise Forbidden("This share link is not valid.")
        expected = self._mac(stream_id, incarnation, when)
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            raise Forbidden("This share link is not valid.")
        if when < time.time():
            raise Forbidden("This share link has expired.")


def load_signing_key(configured: str | None, data_dir: Path) -> bytes:
    """The configured key, or one generated once and kept in data_dir so links
    survive restarts without any configuration."""
    if configured:
        return configured.encode()
    path = data_dir / "signing.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    key = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_bytes()
    with os.fdopen(fd, "wb") as file:
        file.write(key)
    return key
