"""Standard Webhooks signatures (innosystem/webhooks.py): the specification's own test vector,
and what a receiver's check refuses."""

from __future__ import annotations

import json

import pytest

from innosystem.webhooks import InvalidSignature, headers, new_secret, signature, verify

# From the Standard Webhooks reference libraries' tests.
VECTOR = ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
          b'{"test": 2432232314}', "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")


def test_signature_matches_the_specification_vector() -> None:
    secret, msg_id, ts, body, expected = VECTOR
    assert signature(secret, msg_id, ts, body) == expected
    assert verify(secret, {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": expected},
                  body, now=ts) == {"test": 2432232314}


def test_a_receiver_refuses_what_it_should() -> None:
    secret, body = new_secret(), json.dumps({"type": "job.succeeded"}).encode()
    signed = headers(secret, "d1", body, now=1_000_000)
    assert verify(secret, signed, body, now=1_000_000 + 299)["type"] == "job.succeeded"
    bad = [
        (new_secret(), signed, body, 1_000_000),  # another secret
        (secret, signed, body + b" ", 1_000_000),  # another body
        (secret, {**signed, "webhook-id": "d2"}, body, 1_000_000),  # another id
        (secret, signed, body, 1_000_000 + 301),  # too old (replayed)
        (secret, signed, body, 1_000_000 - 301),  # from the future
        (secret, {k: v for k, v in signed.items() if k != "webhook-signature"}, body, 1_000_000),
        (secret, {**signed, "webhook-timestamp": "soon"}, body, 1_000_000),
    ]
    for key, hdrs, payload, now in bad:
        with pytest.raises(InvalidSignature):
            verify(key, hdrs, payload, now=now)


def test_any_of_several_signatures_will_do() -> None:
    old, new, body = new_secret(), new_secret(), b"{}"
    signed = headers(new, "d", body, now=5)
    both = {**signed, "Webhook-Signature": headers(old, "d", body, now=5)["webhook-signature"] + " "
            + signed["webhook-signature"]}
    del both["webhook-signature"]
    assert verify(new, both, body, now=5) == {}
