"""Credit grants against the real embedded PostgreSQL and Valkey: spent first, soonest expiry
first, the unspent rest removed at expiry by a transfer."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from innosystem.kit import principal as principals
from innosystem.kit.db import utcnow
from innosystem.kit.errors import DomainError
from innosystem.tenancy.v1.tenancy_pb2 import Principal
from services.billing.corrections import Corrections
from services.billing.grants import ACTIVE, EXPIRED, CreditGrants
from services.billing.models import CREDIT_EXPIRE, CREDIT_GRANT
from services.billing.service import BillingService
from services.billing.statements import statement
from tests.billing.billing_helpers import ADMIN, funded_wallet, wallet


async def _reason(coro: object) -> tuple[str, list[str]]:
    with pytest.raises(DomainError) as info:
        await coro  # type: ignore[misc]
    return info.value.reason, [f for f, _ in info.value.violations]


async def _remaining(grants: CreditGrants, customer: str) -> dict[str, tuple[int, int, int]]:
    page = await grants.list(ADMIN, customer, 50, "", "")
    return {g.reason: (g.remaining, g.expired, g.status) for g in page.items}


async def test_grants_are_spent_first_soonest_expiry_first(billing: BillingService) -> None:
    grants = CreditGrants(billing)
    customer, _ = await funded_wallet(billing, 1000)
    soon, late = utcnow() + timedelta(days=1), utcnow() + timedelta(days=30)
    first = await grants.grant(ADMIN, customer, 300, late, "late", "g-late", "")
    assert first.transfer.kind == CREDIT_GRANT and first.grant.status == ACTIVE
    assert (first.wallet.balance, first.wallet.promo) == (1300, 300)
    second = await grants.grant(ADMIN, customer, 200, soon, "soon", "g-soon", "")
    again = await grants.grant(ADMIN, customer, 200, soon, "soon", "g-soon", "")
    assert again.grant.id == second.grant.id and again.transfer.id == second.transfer.id
    assert (await wallet(billing, customer)).balance == 1500
    assert (await _reason(grants.grant(ADMIN, customer, 201, soon, "soon", "g-soon", "")))[0] == \
        "IDEMPOTENCY_KEY_REUSED"
    await billing.reserve(f"j1-{customer}", customer, 250, "USD", job_id="j1")
    await billing.capture(f"j1-{customer}", 250)
    w = await wallet(billing, customer)
    assert (w.balance, w.promo) == (1250, 250)
    assert await _remaining(grants, customer) == {"soon": (0, 0, ACTIVE), "late": (250, 0, ACTIVE)}
    # A debit adjustment spends promotional credit first too.
    await Corrections(billing).adjust(ADMIN, customer, -50, "fee", "fee-1", "", "")
    assert await _remaining(grants, customer) == {"soon": (0, 0, ACTIVE), "late": (200, 0, ACTIVE)}
    assert (await wallet(billing, customer)).promo == 200


async def test_expiry_removes_the_unspent_rest_by_a_transfer(billing: BillingService) -> None:
    grants = CreditGrants(billing)
    customer, _ = await funded_wallet(billing, 100)
    expire = utcnow() + timedelta(hours=1)
    done = await grants.grant(ADMIN, customer, 500, expire, "promo", "g-1", "")
    await billing.reserve(f"j-{customer}", customer, 120, "USD", job_id="j")
    await billing.capture(f"j-{customer}", 120)
    assert await _remaining(grants, customer) == {"promo": (380, 0, ACTIVE)}
    assert await grants._expire(done.grant.id, done.wallet.id, "USD", expire + timedelta(seconds=1))
    w = await wallet(billing, customer)
    assert (w.balance, w.promo) == (100, 0)  # the paid 100 is untouched
    assert await _remaining(grants, customer) == {"promo": (0, 380, EXPIRED)}
    page = await billing.list_transactions(ADMIN, customer, 10, "", "", CREDIT_EXPIRE, None, None)
    assert [t.amount for t in page.items] == [380]
    snap = await billing.otb.snapshot(uuid.UUID(customer), "USD")
    assert snap.loaded and snap.balance == 100
    st = await statement(billing, ADMIN, customer, utcnow().strftime("%Y-%m"), "")
    assert (st.credits_granted, st.credits_expired, st.closing) == (500, 380, 100)
    async with billing.db.session() as s:
        assert await billing._global_checks(s) == []


async def test_expiry_never_takes_money_a_running_job_holds(billing: BillingService) -> None:
    grants = CreditGrants(billing)
    customer, _ = await funded_wallet(billing, 0)
    expire = utcnow() + timedelta(hours=1)
    done = await grants.grant(ADMIN, customer, 500, expire, "promo", "g-1", "")
    await billing.reserve(f"j-{customer}", customer, 400, "USD", job_id="j")
    assert await grants._expire(done.grant.id, done.wallet.id, "USD", expire + timedelta(seconds=1))
    w = await wallet(billing, customer)
    assert (w.balance, w.held, w.promo) == (400, 400, 0)
    assert await _remaining(grants, customer) == {"promo": (0, 100, EXPIRED)}
    # Expiring again changes nothing.
    assert not await grants._expire(done.grant.id, done.wallet.id, "USD", expire + timedelta(seconds=2))
    await billing.capture(f"j-{customer}", 400)
    assert (await wallet(billing, customer)).balance == 0


async def test_the_sweeper_expires_what_is_due(billing: BillingService) -> None:
    grants = CreditGrants(billing)
    customer, _ = await funded_wallet(billing, 0)
    expire = utcnow() + timedelta(minutes=5)
    await grants.grant(ADMIN, customer, 70, expire, "promo", "g-1", "")
    await grants.expire_due(expire - timedelta(minutes=1))
    assert await _remaining(grants, customer) == {"promo": (70, 0, ACTIVE)}
    assert await grants.expire_due(expire + timedelta(seconds=1)) >= 1
    assert await _remaining(grants, customer) == {"promo": (0, 70, EXPIRED)}
    assert (await wallet(billing, customer)).balance == 0


async def test_grant_refusals_change_nothing(billing: BillingService) -> None:
    grants = CreditGrants(billing)
    customer, reseller = await funded_wallet(billing, 10, reseller_rate=100)
    later = utcnow() + timedelta(days=1)
    for amount, expire, reason, want in (
            (0, later, "r", ("INVALID_AMOUNT", ["amount_cents"])),
            (-1, later, "r", ("INVALID_AMOUNT", ["amount_cents"])),
            (2**62, later, "r", ("INVALID_AMOUNT", ["amount_cents"])),
            (5, None, "r", ("INVALID_EXPIRE_TIME", ["expire_time"])),
            (5, utcnow() - timedelta(seconds=1), "r", ("INVALID_EXPIRE_TIME", ["expire_time"])),
            (5, utcnow() + timedelta(days=4000), "r", ("INVALID_EXPIRE_TIME", ["expire_time"])),
            (5, later, "", ("MISSING_FIELD", ["reason"]))):
        assert await _reason(grants.grant(ADMIN, customer, amount, expire, reason, "bad", "")) == want
    assert (await _reason(grants.grant(ADMIN, customer, 5, later, "r", "bad", "EUR")))[0] == "CURRENCY_MISMATCH"
    as_reseller = Principal(kind=principals.RESELLER, reseller_id=reseller, key_id="r")
    assert (await _reason(grants.grant(as_reseller, customer, 5, later, "r", "bad", "")))[0] == "ADMIN_ONLY"
    w = await wallet(billing, customer)
    assert (w.balance, w.promo) == (10, 0)
    assert (await grants.list(ADMIN, customer, 10, "", "")).items == []
