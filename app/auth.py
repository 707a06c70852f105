"""Bearer tokens with scopes (SPEC §6). Tokens are compared in constant time and never logged."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path

from app.config import Scope, TokenSpec
from app.errors import Forbidden, Unauthorized
from app.storage.base import MetadataRepo
from app.streams.models import parse_count

SIGNING_KEY = "signing_key"  # its name among the database's shared secrets


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


async def load_signing_key(configured: str | None, data_dir: Path, repo: MetadataRepo) -> bytes:
    """The configured key, or the one in the database, made by the first node to
    start, so that a link made on one node works on all (SPEC §12.2). A key an
    earlier version generated into data_dir/signing.key is the one stored, if
    the database has none yet: the links made with it keep working."""
    if configured:
        return configured.encode()
    try:
        candidate = (data_dir / "signing.key").read_bytes().decode()  # exactly, as it signed
    except (FileNotFoundError, UnicodeDecodeError):
        candidate = ""
    stored = await repo.shared_secret(SIGNING_KEY, candidate or secrets.token_hex(32))
    return stored.encode()
