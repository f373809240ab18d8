"""`Authorization: Bearer <api key>` → the caller's principal, signed for the services.

Resolution and caching live in the common library (`ApiKeyAuthenticator`: keyed by a SHA-256
of the key, short TTL, rejections cached too). This module parses the header and turns the
principal into the signed metadata that outside callers cannot forge. The key itself is
never logged nor forwarded.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import grpc

from gateway.errors import GatewayError, from_domain_error
from innosystem.kit import principal
from innosystem.kit.errors import DomainError
from innosystem.tenancy.v1.tenancy_pb2 import Principal

Authenticate = Callable[[str], Awaitable[Principal]]
Metadata = tuple[tuple[str, str], ...]

# Visible ASCII without spaces (RFC 6750 b64token is stricter; keys are `isk_…`).
_KEY = re.compile(r"[\x21-\x7e]{1,512}")
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="innosystem"'}


def bearer_key(header: str | None) -> str | None:
    """The API key in an Authorization header; None without one; 401 if it is malformed."""
    if header is None:
        return None
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not _KEY.fullmatch(key):
        raise GatewayError(grpc.StatusCode.UNAUTHENTICATED, "MALFORMED_AUTHORIZATION",
                           "the Authorization header must be 'Bearer <API key>'", headers=CHALLENGE)
    return key


class Auth:
    def __init__(self, authenticate: Authenticate, secret: bytes) -> None:
        self._authenticate = authenticate
        self._secret = secret

    async def resolve(self, header: str | None) -> tuple[Principal | None, Metadata]:
        """The caller and its signed principal metadata for the upstream call; (None, ()) for an
        anonymous request."""
        key = bearer_key(header)
        if key is None:
            return None, ()  # the service decides; most answer UNAUTHENTICATED
        try:
            resolved = await self._authenticate(key)
        except DomainError as err:
            failure = from_domain_error(err, "tenancy")
            if err.code == grpc.StatusCode.UNAUTHENTICATED:
                failure.headers.update(CHALLENGE)
            raise failure from None
        return resolved, principal.sign(resolved, self._secret)
