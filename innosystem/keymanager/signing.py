"""Request signing between the platform and a customer's key manager (both bindings).

    x-innosystem-timestamp: <unix seconds>
    x-innosystem-signature: v1=<hex HMAC-SHA256(secret, "<timestamp>\\n<path>\\n<hex SHA-256 of body>")>[,v1=…]

One `v1=` entry per secret the platform holds (two while the customer rotates); the key manager
accepts a request if any entry verifies with any of its secrets and the timestamp is within
`MAX_SKEW_SECONDS` of its clock, which bounds the replay of a captured request.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Sequence

TIMESTAMP_HEADER = "x-innosystem-timestamp"
SIGNATURE_HEADER = "x-innosystem-signature"
MAX_SKEW_SECONDS = 300
MIN_SECRET_BYTES = 32


class SignatureError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def signature(secret: bytes, timestamp: str, path: str, body: bytes) -> str:
    message = f"{timestamp}\n{path}\n{hashlib.sha256(body).hexdigest()}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(secrets: Sequence[bytes], path: str, body: bytes, now: float | None = None) -> list[tuple[str, str]]:
    """The two headers for one request, signed with every secret."""
    timestamp = str(int(time.time() if now is None else now))
    value = ",".join("v1=" + signature(s, timestamp, path, body) for s in secrets)
    return [(TIMESTAMP_HEADER, timestamp), (SIGNATURE_HEADER, value)]


def verify(secrets: Iterable[bytes], timestamp: str | None, header: str | None, path: str, body: bytes,
           now: float | None = None, max_skew: float = MAX_SKEW_SECONDS) -> None:
    """Nothing if the request is authentic and fresh; SignatureError naming the reason otherwise."""
    if not timestamp or not header:
        raise SignatureError("SIGNATURE_MISSING", f"{TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required")
    if not timestamp.isdigit():
        raise SignatureError("TIMESTAMP_INVALID", f"{TIMESTAMP_HEADER} must be unix seconds")
    if abs((time.time() if now is None else now) - int(timestamp)) > max_skew:
        raise SignatureError("TIMESTAMP_OUT_OF_RANGE",
                             f"{TIMESTAMP_HEADER} is more than {int(max_skew)} s from the key manager's clock")
    offered = [e.strip()[3:] for e in header.split(",") if e.strip().startswith("v1=")]
    for secret in secrets:
        expected = signature(secret, timestamp, path, body)
        if any(hmac.compare_digest(expected, o) for o in offered):
            return
    raise SignatureError("SIGNATURE_INVALID", "no signature verifies with the key manager's secrets")


def fingerprint(secret: bytes) -> str:
    """First 8 hex digits of SHA-256: tells which secret is set without revealing it."""
    return hashlib.sha256(secret).hexdigest()[:8]
