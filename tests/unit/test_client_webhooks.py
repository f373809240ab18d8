"""Webhook signature verification (innosystem.client.webhooks) against the Standard Webhooks
specification's published test vector, and what it must refuse."""

from __future__ import annotations

import pytest

from innosystem.client.webhooks import WebhookVerificationError, sign, verify

# The specification's example (standard-webhooks, spec/standard-webhooks.md and its libraries' tests).
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers(signature: str = SIGNATURE, timestamp: int = TIMESTAMP) -> dict[str, str]:
    return {"Webhook-Id": MSG_ID, "Webhook-Timestamp": str(timestamp), "Webhook-Signature": signature}


def test_the_published_vector_signs_and_verifies() -> None:
    assert sign(SECRET, MSG_ID, TIMESTAMP, BODY) == SIGNATURE
    assert verify(SECRET, headers(), BODY, now=TIMESTAMP + 10) == MSG_ID


def test_one_matching_signature_among_several_is_enough() -> None:
    rotated = f"v1,bm90LXRoZS1zaWduYXR1cmU= {SIGNATURE}"
    assert verify(SECRET, headers(rotated), BODY, now=TIMESTAMP) == MSG_ID


@pytest.mark.parametrize("case", ["body", "secret", "old", "future", "missing", "version"])
def test_a_forged_or_replayed_delivery_is_refused(case: str) -> None:
    secret, hdrs, body, now = SECRET, headers(), BODY, TIMESTAMP
    if case == "body":
        body = b'{"test": 2432232315}'
    elif case == "secret":
        secret = "whsec_" + "QUJD" * 8
    elif case == "old":
        now = TIMESTAMP + 301
    elif case == "future":
        now = TIMESTAMP - 301
    elif case == "missing":
        del hdrs["Webhook-Signature"]
    else:
        hdrs = headers(SIGNATURE.replace("v1,", "v2,"))
    with pytest.raises(WebhookVerificationError):
        verify(secret, hdrs, body, now=now)
