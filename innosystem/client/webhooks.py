"""Verifying a webhook delivery as the Standard Webhooks specification signs it.

The platform sends `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`: one or
more space-separated `v1,<base64 HMAC-SHA256>` over `{id}.{timestamp}.{body}` keyed by the
endpoint's secret, `whsec_<base64 key>`. Several signatures appear while a secret is rotated; one
match is enough. Pure: give it the raw body bytes exactly as received (re-serialized JSON fails).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

from innosystem.client.errors import ClientError

TOLERANCE_SECONDS = 5 * 60  # the specification's default replay window
_PREFIX = "whsec_"


class WebhookVerificationError(ClientError):
    """The delivery is not from the platform (or was replayed): answer it with 400 and do nothing."""


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the webhook secret is not whsec_ followed by base64") from None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one message (what the platform sends; handy in tests)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, tolerance: float = TOLERANCE_SECONDS,
           now: float | None = None) -> str:
    """Check a delivery and return its `webhook-id` (use it to drop a repeated delivery); raise
    WebhookVerificationError when a header is missing, the time is outside the tolerance, or no
    signature matches."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (lower.get(h, "") for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (msg_id and stamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a Unix time in seconds") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance (too old or in the future)")
    expected = sign(secret, msg_id, timestamp, body).encode()
    for candidate in signatures.split():
        version, _, _value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(candidate.encode(), expected):
            return msg_id
    raise WebhookVerificationError("no webhook-signature matches")
