"""Bearer tokens with scopes (SPEC §6). Tokens are compared in constant time and never logged."""

from __future__ import annotations

import hmac

from app.config import Scope, TokenSpec
from app.errors import Forbidden, Unauthorized


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

    def require(self, authorization: str | None, *allowed: Scope) -> None:
        """Pass when the token has any of the allowed scopes. Raises Unauthorized or Forbidden."""
        scopes = self.scopes_for(authorization)
        if not scopes.intersection(allowed):
            raise Forbidden(f"This token lacks the {' or '.join(allowed)} scope.")
