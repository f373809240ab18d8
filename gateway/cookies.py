"""The session cookie (set, cleared) and the CSRF check on requests made with it.

The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it)
and Secure when the request came over TLS, directly or as `X-Forwarded-Proto: https` from the
proxy in front. Every unsafe method made with the cookie must also carry `X-CSRF-Token`, the
token tenancy derived for the session (`kit.sessions`), which a page on another origin cannot
know. Requests with `Authorization: Bearer` carry no ambient credential and are not checked.
"""

from __future__ import annotations

import grpc
from aiohttp import web

from gateway.errors import GatewayError
from innosystem.kit import sessions

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_secure(request: web.Request) -> bool:
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def set_cookie(token: str, secure: bool) -> str:
    """The Set-Cookie value for a new session; an empty token clears the cookie."""
    attributes = "HttpOnly; SameSite=Strict; Path=/" + ("; Secure" if secure else "")
    if not token:
        return f"{sessions.COOKIE}=; Max-Age=0; {attributes}"
    return f"{sessions.COOKIE}={token}; {attributes}"


def check_csrf(request: web.Request, secret: bytes, session_id: str) -> None:
    if request.method in SAFE_METHODS:
        return
    if not sessions.csrf_matches(secret, session_id, request.headers.get(sessions.CSRF_HEADER)):
        raise GatewayError(grpc.StatusCode.PERMISSION_DENIED, "CSRF_TOKEN_INVALID",
                           f"a {request.method} made with the session cookie needs the session's "
                           f"{sessions.CSRF_HEADER} header")
