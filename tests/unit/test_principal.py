import time

import pytest

from innosystem.kit import principal
from innosystem.kit.errors import Unauthenticated
from innosystem.tenancy.v1.tenancy_pb2 import Principal

SECRET = b"s" * 32


def test_signed_principal_round_trips() -> None:
    p = Principal(kind=principal.CUSTOMER, customer_id="c1", reseller_id="r1", key_id="k")
    assert principal.verify(principal.sign(p, SECRET), SECRET) == p


def test_no_metadata_means_no_principal() -> None:
    assert principal.verify([("x-other", "1")], SECRET) is None


def test_forged_signature_is_refused() -> None:
    """An outsider can write the principal header, but cannot sign it without the secret."""
    admin = Principal(kind=principal.ADMIN)
    forged = principal.sign(admin, b"a guessed secret")
    with pytest.raises(Unauthenticated) as err:
        principal.verify(forged, SECRET)
    assert err.value.reason == "PRINCIPAL_FORGED"


def test_signature_does_not_cover_another_body() -> None:
    header, _ = principal.sign(Principal(kind=principal.ADMIN), SECRET)
    _, signature = principal.sign(Principal(kind=principal.CUSTOMER, customer_id="c"), SECRET)
    with pytest.raises(Unauthenticated):
        principal.verify([header, signature], SECRET)


def test_expired_principal_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = principal.sign(Principal(kind=principal.ADMIN), SECRET, ttl=10)
    monkeypatch.setattr(time, "time", lambda: 10**10)
    with pytest.raises(Unauthenticated) as err:
        principal.verify(entries, SECRET)
    assert err.value.reason == "PRINCIPAL_EXPIRED"


def test_only_the_signature_header_is_malformed() -> None:
    with pytest.raises(Unauthenticated):
        principal.verify([(principal.PRINCIPAL_HEADER, "abc.1")], SECRET)


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
