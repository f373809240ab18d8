"""`Authorization: Bearer <api key>` → the caller's principal, signed for the services.

Resolution and caching live in the common library (`ApiKeyAuthenticator`: keyed by a SHA-256
of the key, short TTL, rejections cached too). This module parses the header, refuses a request
without valid credentials before anything else happens to it, and turns the principal into the
signed metadata that outside callers cannot forge, bound to the one method the route calls. The
key itself is never logged nor forwarded.
"""

from __future__ import annotations

import re

import grpc

from gateway.cookies import set_cookie
from gateway.errors import GatewayError, UpstreamError, from_domain_error
from gateway.ratelimit import RateLimiter
from innosystem.kit import principal, sessions
from innosystem.kit.clients import ApiKeyAuthenticator
from innosystem.kit.errors import DomainError
from innosystem.tenancy.v1.tenancy_pb2 import Principal

Metadata = tuple[tuple[str, str], ...]

# Visible ASCII without spaces (RFC 6750 b64token is stricter; keys are `isk_…`).
_KEY = re.compile(r"[\x21-\x7e]{1,512}")
_SESSION = re.compile(sessions.SESSION_TOKEN_PREFIX + r"[A-Za-z0-9_-]{16,250}")
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


NO_CREDENTIALS = "NO_CREDENTIALS"


class Auth:
    """Every proxied request authenticates here first: before its route's input is looked at or
    any upstream is called. No credentials, a malformed header or a bad key is a 401 (or, from
    an address that has sent too many of those, a 429)."""

    def __init__(self, authenticator: ApiKeyAuthenticator, secret: bytes, limiter: RateLimiter | None = None) -> None:
        self._authenticator = authenticator
        self._secret = secret
        self._limiter = limiter

    async def resolve(self, header: str | None, address: str) -> Principal:
        """The caller, authenticated; `sign` makes its metadata once the route is known."""
        try:
            key = bearer_key(header)
            if key is None:
                raise GatewayError(grpc.StatusCode.UNAUTHENTICATED, NO_CREDENTIALS,
                                   "this API needs an API key (Authorization: Bearer <API key>)",
                                   headers=dict(CHALLENGE))
            if self._limiter is not None and self._authenticator.known(key) is None:
                await self._limiter.check_address(address)  # 429 before tenancy is asked
            try:
                resolved = await self._authenticator(key)
            except DomainError as err:
                failure = from_domain_error(err, "tenancy")
                if err.code == grpc.StatusCode.UNAUTHENTICATED:
                    failure.headers.update(CHALLENGE)
                raise failure from None
        except (GatewayError, UpstreamError) as err:
            if err.http_status == 401 and self._limiter is not None:
                await self._limiter.charge_address(address)  # raises the 429 instead once over
            raise
        return resolved

    async def resolve_session(self, token: str, address: str, secure: bool) -> Principal:
        """The person of a session cookie. A cookie that no longer works is a 401 that clears it,
        counted against the address like a bad key."""
        try:
            if not _SESSION.fullmatch(token):
                raise GatewayError(grpc.StatusCode.UNAUTHENTICATED, "SESSION_INVALID",
                                   "the session is unknown or has ended; sign in again")
            if self._limiter is not None and self._authenticator.known(token, session=True) is None:
                await self._limiter.check_address(address)
            try:
                return await self._authenticator.session(token)
            except DomainError as err:
                raise from_domain_error(err, "tenancy") from None
        except (GatewayError, UpstreamError) as err:
            if err.http_status == 401:
                err.headers["Set-Cookie"] = set_cookie("", secure)
                if self._limiter is not None:
                    await self._limiter.charge_address(address)
            raise

    def sign(self, caller: Principal, grpc_path: str) -> Metadata:
        """The caller's principal metadata for one upstream call: valid on that method only, for
        a minute (see `kit.principal`), so a header seen upstream is no key to anything else."""
        return principal.sign(caller, self._secret, grpc_path)
