"""Who may call the HTTP API: bearer tokens, read-only or admin.

Tokens travel in the `Authorization: Bearer ...` header, never in a cookie, so a page of
another site cannot make a browser send one: state-changing requests are CSRF-safe by
construction. EventSource cannot set headers, so `GET /events` also takes the token as
`?token=` (read scope only).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from starlette.requests import HTTPConnection

__all__ = ["Access", "Scope", "new_token"]


class Scope(Enum):
    READ = "read"
    ADMIN = "admin"


def new_token() -> str:
    """A random token (256 bits), for `simplequeue serve` when none is given."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Access:
    """The tokens the API accepts. An admin token may do everything a read token may.
    `public_read`: reads need no token at all (a trusted network only)."""

    admin_tokens: tuple[str, ...] = ()
    read_tokens: tuple[str, ...] = ()
    public_read: bool = False

    @classmethod
    def of(
        cls,
        admin: Iterable[str] = (),
        read: Iterable[str] = (),
        *,
        public_read: bool = False,
    ) -> Access:
        admin_tokens, read_tokens = tuple(admin), tuple(read)
        for token in admin_tokens + read_tokens:
            if not isinstance(token, str) or len(token) < 16:
                raise ValueError("every token must be a string of at least 16 characters")
        if not admin_tokens:
            raise ValueError("the HTTP API needs at least one admin token")
        return cls(admin_tokens, read_tokens, public_read)

    def presented(self, request: HTTPConnection) -> bool:
        """The request carries a bearer token (valid or not)."""
        return _bearer(request) is not None

    def scope_of(self, request: HTTPConnection, *, query_token: bool = False) -> Scope | None:
        """The scope the request's token grants; None without a valid token."""
        token = _bearer(request)
        if token is None and query_token:
            token = request.query_params.get("token")
        if token is None:
            return Scope.READ if self.public_read else None
        if _known(token, self.admin_tokens):
            return Scope.ADMIN
        if _known(token, self.read_tokens):
            return Scope.READ
        return None


def _bearer(request: HTTPConnection) -> str | None:
    header = request.headers.get("authorization", "")
    kind, _, token = header.partition(" ")
    return token.strip() if kind.lower() == "bearer" and token.strip() else None


def _known(token: str, tokens: tuple[str, ...]) -> bool:
    """Compared in constant time, every token: the answer takes as long either way."""
    given = token.encode()
    found = False
    for candidate in tokens:
        found |= hmac.compare_digest(given, candidate.encode())
    return found
