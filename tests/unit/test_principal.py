import hashlib
import hmac
import time

import pytest

from innosystem.kit import principal
from innosystem.kit.errors import Unauthenticated
from innosystem.tenancy.v1.tenancy_pb2 import Principal

SECRET = b"s" * 32
LEASE = "/innosystem.jobs.v1.JobService/LeaseJobs"
COMPLETE = "/innosystem.jobs.v1.JobService/CompleteJobs"


def refusal(metadata: object, method: str = COMPLETE, now: float | None = None) -> str:
    with pytest.raises(Unauthenticated) as err:
        principal.verify(metadata, SECRET, method, now=now)  # type: ignore[arg-type]
    return err.value.reason


def test_signed_principal_round_trips() -> None:
    p = Principal(kind=principal.CUSTOMER, customer_id="c1", reseller_id="r1", key_id="k")
    assert principal.verify(principal.sign(p, SECRET, COMPLETE), SECRET, COMPLETE) == p


def test_no_metadata_means_no_principal() -> None:
    assert principal.verify([("x-other", "1")], SECRET, COMPLETE) is None


def test_forged_signature_is_refused() -> None:
    """An outsider can write the principal header, but cannot sign it without the secret."""
    forged = principal.sign(Principal(kind=principal.ADMIN), b"a guessed secret", COMPLETE)
    assert refusal(forged) == "PRINCIPAL_FORGED"


def test_signature_does_not_cover_another_body() -> None:
    header, _ = principal.sign(Principal(kind=principal.ADMIN), SECRET, COMPLETE)
    _, signature = principal.sign(Principal(kind=principal.CUSTOMER, customer_id="c"), SECRET, COMPLETE)
    assert refusal([header, signature]) == "PRINCIPAL_FORGED"


def test_a_header_signed_for_one_method_is_refused_on_another() -> None:
    """Issue 14 item 17: a header seen on one call is no key to another method."""
    signed = principal.sign(principal.service_principal("runners"), SECRET, LEASE)
    assert principal.verify(signed, SECRET, LEASE) is not None
    assert refusal(signed, COMPLETE) == "PRINCIPAL_METHOD_MISMATCH"


def test_the_method_cannot_be_edited_in_the_header() -> None:
    (_, value), (_, sig) = principal.sign(principal.service_principal("runners"), SECRET, LEASE)
    edited = [(principal.PRINCIPAL_HEADER, value.replace(LEASE, COMPLETE)), (principal.SIGNATURE_HEADER, sig)]
    assert refusal(edited) == "PRINCIPAL_FORGED"


def test_a_header_lives_a_minute_with_a_little_clock_skew() -> None:
    """Issue 14 item 17: short-lived. Valid until its expiry (plus the skew allowance), not after."""
    t0 = 1_800_000_000.0
    signed = principal.sign(principal.service_principal("runners"), SECRET, COMPLETE, now=t0)
    life, skew = principal.LIFETIME_SECONDS, principal.CLOCK_SKEW_SECONDS
    assert life <= 60
    for later in (0, life, life + skew):
        assert principal.verify(signed, SECRET, COMPLETE, now=t0 + later) is not None
    assert refusal(signed, now=t0 + life + skew + 1) == "PRINCIPAL_EXPIRED"
    # A signer whose clock runs a little ahead is accepted; a header from far in the future is not.
    assert principal.verify(signed, SECRET, COMPLETE, now=t0 - skew) is not None
    assert refusal(signed, now=t0 - skew - 1) == "PRINCIPAL_LIFETIME_TOO_LONG"


def test_a_header_two_minutes_old_is_expired() -> None:
    signed = principal.sign(Principal(kind=principal.ADMIN), SECRET, COMPLETE, now=time.time() - 120)
    assert refusal(signed) == "PRINCIPAL_EXPIRED"


def test_the_verifier_caps_the_lifetime_whatever_the_signer_asked() -> None:
    """A header signed to live an hour (a signer's bug, or an old one) is refused outright."""
    signed = principal.sign(Principal(kind=principal.ADMIN), SECRET, COMPLETE, ttl=3600)
    assert refusal(signed) == "PRINCIPAL_LIFETIME_TOO_LONG"


def test_only_the_signature_header_is_malformed() -> None:
    assert refusal([(principal.PRINCIPAL_HEADER, "abc.1")]) == "PRINCIPAL_MALFORMED"


def test_a_header_in_the_unbound_format_is_malformed() -> None:
    """The format before method binding (`body.expiry`), even correctly signed, is not accepted."""
    value = f"{principal.encode(Principal(kind=principal.ADMIN))}.{int(time.time()) + 30}"
    sig = hmac.new(SECRET, value.encode(), hashlib.sha256).hexdigest()
    assert refusal([(principal.PRINCIPAL_HEADER, value), (principal.SIGNATURE_HEADER, sig)]) == "PRINCIPAL_MALFORMED"


def test_current_requires_a_principal() -> None:
    token = principal.bind(None)
    try:
        with pytest.raises(Unauthenticated):
            principal.current()
    finally:
        principal.reset(token)


@pytest.mark.parametrize(("caller", "visible"), [
    (Principal(kind=principal.ADMIN), True),
    (Principal(kind=principal.RESELLER, reseller_id="r1"), True),
    (Principal(kind=principal.RESELLER, reseller_id="r2"), False),
    (Principal(kind=principal.CUSTOMER, customer_id="c1"), True),
    (Principal(kind=principal.CUSTOMER, customer_id="c2"), False),
])
def test_customer_visibility(caller: Principal, visible: bool) -> None:
    assert principal.can_see_customer(caller, "c1", "r1") is visible
