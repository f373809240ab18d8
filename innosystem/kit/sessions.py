"""A person's browser session as the gateway and tenancy both see it: the cookie, the CSRF token.

Tenancy creates a session and answers its opaque token in response metadata (`SESSION_METADATA`),
never in the JSON body; the gateway puts it in the HttpOnly cookie and, on later requests, asks
tenancy (cached, like API keys) for the principal it stands for.

The CSRF token is derived, not stored: HMAC(internal secret, session id). Tenancy hands it to
the browser with the session; the gateway recomputes it from the resolved principal and refuses
an unsafe method made with the cookie whose `X-CSRF-Token` differs. A page on another origin can
neither read the token nor compute it.
"""

from __future__ import annotations

import hashlib
import hmac

COOKIE = "innosystem_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TOKEN_PREFIX = "iss_"
# Response metadata: the new session's token (sign-in), or "" to clear the cookie (sign-out).
SESSION_METADATA = "x-innosystem-session"
# Request metadata from the gateway: the client's address, for lockout, sessions and the audit log.
CLIENT_ADDRESS_METADATA = "x-innosystem-client-address"


def csrf_token(secret: bytes, session_id: str) -> str:
    return hmac.new(secret, b"csrf:" + session_id.encode(), hashlib.sha256).hexdigest()


def csrf_matches(secret: bytes, session_id: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(csrf_token(secret, session_id), given or "")
