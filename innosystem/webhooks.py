"""Standard Webhooks signatures (standardwebhooks.com), for the platform that signs job events and
for receivers that check them.

    webhook-id:        the delivery id (the same on every retry: drop duplicates by it)
    webhook-timestamp: unix seconds of this attempt
    webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>

The key is the base64 after `whsec_` in the secret shown when the webhook was created. A receiver:

    from innosystem.webhooks import verify
    event = verify(secret, request.headers, request.body)   # InvalidSignature if not ours or too old
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

PREFIX = "whsec_"
ID, TIMESTAMP, SIGNATURE = "webhook-id", "webhook-timestamp", "webhook-signature"
# A signature older or newer than this is refused (replay protection, as the specification says).
TOLERANCE_SECONDS = 5 * 60


class InvalidSignature(Exception):
    """The request was not signed with this secret, or its timestamp is outside the tolerance."""


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(secret: str, msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The three headers of one attempt."""
    ts = int(time.time() if now is None else now)
    return {ID: msg_id, TIMESTAMP: str(ts), SIGNATURE: signature(secret, msg_id, ts, body)}


def verify(secret: str, request_headers: Mapping[str, str], body: bytes, *, now: float | None = None,
           tolerance: float = TOLERANCE_SECONDS) -> Any:
    """The event (parsed JSON) if one of the request's signatures is this secret's and its timestamp
    is within `tolerance` of `now`; InvalidSignature otherwise."""
    h = {k.lower(): v for k, v in request_headers.items()}
    msg_id, ts, sigs = h.get(ID), h.get(TIMESTAMP), h.get(SIGNATURE)
    if not msg_id or not ts or not sigs:
        raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        stamp = int(ts)
    except ValueError:
        raise InvalidSignature("webhook-timestamp is not a number") from None
    if abs((time.time() if now is None else now) - stamp) > tolerance:
        raise InvalidSignature("webhook-timestamp is outside the tolerance")
    expected = signature(secret, msg_id, stamp, body)
    # Several space-separated signatures may be sent (during a secret rotation): any one will do.
    if not any(hmac.compare_digest(expected, s) for s in sigs.split()):
        raise InvalidSignature("no signature matches")
    return json.loads(body)
